"""Side by side: the transformed LLM, the encoder baseline and the prompted baseline on the same split and scorer.

Each system runs in its own process (`llm-ner train`, `llm-ner baseline encoder|prompt`) so its peak memory is its
own; a finished run dir is reused unless --rerun. Existing runs can be plugged in with --llm-run/--encoder-run/
--prompt-run. The prompted baseline is scored on the first N test sentences (it costs a request each): every
system is also scored on that same subset, so the comparison stays like for like.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from .. import rundir as R
from ..baselines.encoder import ENCODER_DEFAULTS
from ..config import load_config
from ..data import DataError
from ..evaluation.evaluate import compute_metrics
from ..fsutil import atomic_write_text
from ..modeling.backbones import DEFAULT_DECODER, is_encoder

log = logging.getLogger(__name__)

SYSTEMS = ("llm", "encoder", "prompt")


def sides(config: str | None, llm: str | None = None, encoder: str | None = None,
          overrides: dict | None = None) -> dict[str, str]:
    """The backbones a comparison sets side by side, where not given: the config's backbone if it is a decoder (a
    user's own LLM), else DEFAULT_DECODER (the quickstart names the encoder that won at its budget; a comparison still
    sets a decoder against it); and the encoder baseline's default."""
    if llm is None:
        backbone = load_config(config, overrides or {}).model.backbone
        llm = DEFAULT_DECODER if is_encoder(backbone) else backbone
    return {"llm": llm, "encoder": encoder or ENCODER_DEFAULTS["model.backbone"]}


def run_system(name: str, config: str, run_dir: Path, prompt_sentences: int, progress: bool,
               backbone: str | None = None) -> None:
    base = [sys.executable, "-m", "llm_ner.cli"]
    model = ["--model", backbone] if backbone else []
    cmd = {
        "llm": ["train", "--config", config, "--output", str(run_dir), *model],
        "encoder": ["baseline", "encoder", "--config", config, "--output", str(run_dir), *model],
        "prompt": ["baseline", "prompt", "--config", config, "--output", str(run_dir), "--max-sentences",
                   str(prompt_sentences)],
    }[name]
    if not progress:
        cmd.append("--no-progress")
    log.info("[compare] %s: llm-ner %s", name, " ".join(cmd))
    subprocess.run(base + cmd, check=True)


def system_row(run: R.Run, subset: int | None, name: str | None = None) -> dict:
    m, summary, pstats, cfg = run.metrics, run.summary, run.prompt_stats or {}, run.model_config or {}
    row = {
        "system": name or run.kind, "kind": run.kind, "run_dir": str(run.dir), "model": run.model_name,
        "test_sentences": m["sentences"],
        "accuracy": m["accuracy"], "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
        "strict_f1": m.get("strict", {}).get("f1"),  # seqeval strict IOB2 (runs before it was added: n/a)
        "macro_f1": m["macro_f1"], "per_type_f1": {t: v["f1"] for t, v in m["per_type"].items()},
        "train_seconds": summary.get("train_seconds"),
        "predict_words_per_second": summary.get("test_words_per_second") or pstats.get("tokens_per_second") or (
            round(m["tokens"] / summary["test_seconds"], 1) if summary.get("test_seconds") else None),
        "peak_rss_mb": summary.get("peak_rss_mb"),
        "params_total": (summary.get("parameters") or {}).get("total"),
        "params_trainable": (summary.get("parameters") or {}).get("trainable"),
        "cost_per_1k_tokens_usd": pstats.get("cost_per_1k_tokens_usd"),
        "prompt_failures": pstats.get("counts"),
        "unmask": cfg.get("model", {}).get("unmask"), "crf": cfg.get("model", {}).get("crf"), "mode": cfg.get("mode"),
    }
    if subset and (run.dir / R.TEST_PREDICTIONS).is_file():
        sents, pred = run.predictions()
        sm = compute_metrics([s.tags for s in sents[:subset]], pred[:subset])
        row["subset_sentences"] = min(subset, len(sents))
        row["subset_f1"] = sm["f1"]
    return row


def _fmt(v, spec: str = ".2f") -> str:
    if v is None:
        return "n/a"
    return format(v, spec) if isinstance(v, int | float) else str(v)


def table_markdown(rows: list[dict]) -> str:
    types = sorted({t for r in rows for t in r["per_type_f1"]})
    n_sub = max((r.get("subset_sentences") or 0) for r in rows)
    head = (["system", "model", "test sents", "acc", "P", "R", "F1", "F1 strict", "macro F1"]
            + [f"F1 {t}" for t in types]
            + [f"F1 first {n_sub}", "train s", "predict words/s", "peak MB", "params (trainable)", "$ / 1k tok"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        params = "n/a"
        if r["params_total"] is not None:
            params = f"{r['params_total'] / 1e6:.1f}M ({r['params_trainable'] / 1e6:.2f}M)"
        cells = [r["system"], str(r["model"]).split("/")[-1], str(r["test_sentences"]), _fmt(r["accuracy"]),
                 _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), _fmt(r["strict_f1"]), _fmt(r["macro_f1"])]
        cells += [_fmt(r["per_type_f1"].get(t)) for t in types]
        cells += [_fmt(r.get("subset_f1")), _fmt(r["train_seconds"], ".0f"),
                  _fmt(r["predict_words_per_second"], ".1f"), _fmt(r["peak_rss_mb"], ".0f"), params,
                  _fmt(r["cost_per_1k_tokens_usd"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(config: str, output: str | Path, prompt_sentences: int = 100, systems=SYSTEMS,
            runs: dict[str, str] | None = None, rerun: bool = False, progress: bool = True,
            models: dict[str, str | None] | None = None) -> list[dict]:
    """`models`: the backbone of the llm / encoder system (default: `sides`)."""
    out = Path(output)
    models = sides(config, **(models or {}))
    run_dirs = {}
    for name in systems:
        given = (runs or {}).get(name)
        d = Path(given) if given else out / name
        if not given and (rerun or not R.is_finished(d)):
            run_system(name, config, d, prompt_sentences, progress, models.get(name))
        run_dirs[name] = R.load_run(d)
        if not given and name in models and run_dirs[name].model_name != models[name]:
            raise DataError(f"{d} holds a finished {name} run of {run_dirs[name].model_name}, not {models[name]}: "
                            "give another --output, or --rerun to replace it")
    subset = prompt_sentences if "prompt" in run_dirs else None
    rows = [system_row(run, subset, n) for n, run in run_dirs.items()]
    md = table_markdown(rows)
    atomic_write_text(out / "comparison.json", json.dumps({"config": config, "rows": rows}, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", md + "\n")
    return rows
