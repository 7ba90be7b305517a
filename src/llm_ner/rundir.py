"""A run directory: the names of the files a run writes (one place), and one loader that reads a finished run back
for compare, report and systems.

    config.yaml          the resolved run config            model/              best model on dev (+ best.json)
    checkpoints/         Trainer checkpoints (resume)       metrics.jsonl       training curves (loss, dev F1)
    summary.json         sizes, times, system kind, test    test_metrics.json   test scores
    test_predictions.conll  token gold pred                 analysis.json       error analysis of the test set
    prompt_stats.json    prompted baseline only (requests, failures, cost)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml

from .config import NERConfig, load_config
from .data import DataError, Sentence, load_split, read_predictions
from .modeling import persistence
from .modeling.backbones import is_encoder

CONFIG = "config.yaml"
MODEL = "model"
CHECKPOINTS = "checkpoints"
INCOMPLETE = "incomplete_checkpoints"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TEST_METRICS = "test_metrics.json"
TEST_PREDICTIONS = "test_predictions.conll"
ANALYSIS = "analysis.json"
PROMPT_STATS = "prompt_stats.json"
BEST = "best.json"  # inside model/: the best dev F1 so far, survives a kill
MODEL_CONFIG = persistence.CONFIG_NAME  # inside model/
CALIBRATION = "calibration.json"  # inside model/: temperature and score thresholds (calibrate.py)

def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Run:
    dir: Path
    kind: str  # "llm" | "encoder" | "prompt"
    model_name: str | None  # the backbone (alias / hub id) or the prompted model's name — never a cache path
    metrics: dict  # test_metrics.json
    summary: dict = field(default_factory=dict)
    prompt_stats: dict | None = None
    analysis: dict | None = None
    model_config: dict | None = None  # model/llm_ner_config.json in the version 2 layout
    curve: list[dict] = field(default_factory=list)
    config: dict | None = None  # config.yaml: the resolved run config (data, training, seed)
    # Every other evaluation of the run's model saved beside it as NAME_metrics.json (llm-ner evaluate --output):
    # NAME -> metrics, e.g. "cleanconll_test"
    other_metrics: dict[str, dict] = field(default_factory=dict)
    calibration: dict | None = None  # model/calibration.json: the temperature, what it was fitted on, ECE there

    @property
    def name(self) -> str:
        return self.dir.name

    def predictions(self) -> tuple[list[Sentence], list[list[str]]]:
        return read_predictions(self.dir / TEST_PREDICTIONS)


def is_finished(run_dir: str | Path) -> bool:
    d = Path(run_dir)
    return (d / TEST_METRICS).is_file() and ((d / SUMMARY).is_file() or (d / PROMPT_STATS).is_file())


def load_run(run_dir: str | Path) -> Run:
    """Read a finished run (trained model or prompted baseline). Runs written by earlier versions load too."""
    d = Path(run_dir)
    if not (d / TEST_METRICS).is_file():
        raise DataError(f"{d}: not a finished run ({TEST_METRICS} missing)")
    summary = _json(d / SUMMARY) or {}
    pstats = _json(d / PROMPT_STATS)
    mcfg = _json(d / MODEL / MODEL_CONFIG)
    if mcfg is not None and mcfg.get("format_version", 1) == 1:
        mcfg = NERConfig.from_v1(mcfg)
    if pstats is not None:
        kind, name = "prompt", pstats.get("model_name") or pstats.get("model")
    else:
        name = (mcfg or {}).get("model", {}).get("backbone") or summary.get("backbone")
        model_type = summary.get("model_type") or (_json(d / MODEL / "backbone" / "config.json") or {}).get(
            "model_type")
        kind = summary.get("system") or ("encoder" if is_encoder(name or "", SimpleNamespace(model_type=model_type))
                                         else "llm")
    curve = []
    if (d / METRICS).is_file():
        curve = [json.loads(x) for x in (d / METRICS).read_text().splitlines() if x.strip()]
    run_cfg = yaml.safe_load((d / CONFIG).read_text()) if (d / CONFIG).is_file() else None
    others = {p.name.removesuffix("_metrics.json"): json.loads(p.read_text())
              for p in sorted(d.glob("*_metrics.json")) if p.name != TEST_METRICS}
    return Run(d, kind, name, json.loads((d / TEST_METRICS).read_text()), summary, pstats, _json(d / ANALYSIS),
               mcfg, curve, run_cfg if isinstance(run_cfg, dict) else None, others, _json(d / MODEL / CALIBRATION))


def model_identity(model_dir: str, name: str | None = None, version: str | None = None) -> dict:
    """What responses say about the model: a name (default: the run's directory — `RUN/model` gives RUN) and a
    version (default: sha256 of the config files and the weights' names, sizes and first MiB — changes whenever the
    model is retrained, costs milliseconds to compute)."""
    d = Path(model_dir).resolve()
    if not name:
        name = d.parent.name if d.name == "model" else d.name
    if not version:
        h = hashlib.sha256()
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(d)}:{f.stat().st_size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
        version = h.hexdigest()[:12]
    return {"name": name, "version": version}


def model_tag(identity: dict) -> str:
    """"name@version": how pre-annotations and Label Studio name the model that made them."""
    return f"{identity['name']}@{identity['version']}"


RECORD_FILES = (MODEL_CONFIG, CALIBRATION, BEST)  # model/'s small files: what a kept record holds of it


def drop_weights(run_dir: Path, model: bool = True) -> None:
    """Delete a finished run's checkpoints (and its model, unless `model=False`), keeping its records — config,
    summary, metrics, analysis: what a study, curve or simulation reads once the run is recorded (an LLM run dir
    holds ~3.4 GB of weights)."""
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    if model:
        shutil.rmtree(run_dir / MODEL, ignore_errors=True)


def trained_on(model_dir: str | Path) -> list[Sentence] | None:
    """The sentences a model was trained on, from its run's config.yaml (RUN/model -> RUN/config.yaml); None when the
    model dir is not inside a run dir. A config whose training data cannot be read (moved, another machine) is a
    DataError naming it."""
    cfg_path = Path(model_dir).resolve().parent / CONFIG
    if not cfg_path.is_file():
        return None
    try:
        return load_split(load_config(cfg_path), "train") or []
    except (DataError, FileNotFoundError) as e:
        raise DataError(f"{cfg_path}: the model's training data cannot be read ({e})") from None
