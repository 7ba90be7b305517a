"""How much labelled data does a user need? A learning curve: the LLM (a run config's recipe) against the encoder
baseline (its own recipe, `baselines.encoder`), trained on random subsets of the training data of growing size, over
seeds, each scored on the same dev and test sets. A subset is the first N sentences of a seed's shuffle of the
training split, so the sizes of one seed are nested (and are the random arm of the active-learning simulation,
scripts/simulate_al.py). A point in OUTPUT/results.json is not run again, nor is a finished run: an interrupted
curve continues, and results.json alone (without the run dirs) is enough to go on from."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

from .. import rundir
from ..baselines.encoder import encoder_config
from ..config import RunConfig, load_config
from ..data import DataError, Sentence, load_split, write_conll
from ..fsutil import atomic_write_text
from ..modeling.backbones import resolve
from ..training.train import train

SYSTEMS = {"llm": load_config, "encoder": encoder_config}  # name -> (config, overrides) -> RunConfig


def shuffled(sentences: Sequence[Sentence], seed: int) -> list[Sentence]:
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    return [sentences[i] for i in order]


def budgeted(cfg: RunConfig, n: int) -> RunConfig:
    """The config's training budget at a smaller size: on fewer sentences than its own `data.max_train_sentences`
    (the quickstart's 2,000), proportionally more epochs — the same optimizer steps, so a 250-sentence run gets the
    quickstart's 125 steps (8 epochs) instead of 16 steps that teach nothing — and the same dev evaluations (every
    epoch of the config's own run, not of the smaller one). Above it, the config's epochs."""
    full, t = cfg.data.max_train_sentences, cfg.training
    if not full or n >= full or t.max_steps > 0:
        return cfg
    eval_steps = t.eval_steps or math.ceil(full / (t.batch_size * t.grad_accum))
    return cfg.model_copy(update={"training": t.model_copy(update={"epochs": t.epochs * full / n,
                                                                   "eval_steps": eval_steps})})


def train_on(cfg: RunConfig, sentences: Sequence[Sentence], run_dir: Path, progress: bool = False) -> dict:
    """`cfg` trained on exactly `sentences` (written into the run dir as CoNLL) at the config's budget (`budgeted`)
    — or the finished run's summary."""
    summary = run_dir / rundir.SUMMARY
    if summary.is_file():  # a finished run is reused — only if it trained this backbone
        done = json.loads(summary.read_text())
        if done.get("backbone") != cfg.model.backbone:
            raise DataError(f"{run_dir} holds a finished run of {done.get('backbone')}, not {cfg.model.backbone}: "
                            "give another --output")
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    write_conll(run_dir / "labelled.conll", sentences, None)
    cfg = budgeted(cfg, len(sentences)).model_copy(update={"output": str(run_dir), "data": cfg.data.model_copy(
        update={"train": str(run_dir / "labelled.conll"), "max_train_sentences": None})})
    train(cfg, progress=progress)
    return json.loads(summary.read_text())


def learning_curve(config: str, sizes: Sequence[int | None], seeds: Sequence[int], systems: Sequence[str],
                   output: str | Path, seeds_up_to: int = 2000, overrides: dict | None = None,
                   per_system: dict[str, dict] | None = None, progress: bool = False,
                   keep_models: bool = False) -> list[dict]:
    """One row per (system, size, seed) run; a size above `seeds_up_to` (or None: all) runs the first seed only.
    `overrides` apply to every run, `per_system` (system -> overrides) to that system's runs only — its own recipe,
    e.g. the encoder's 8 sentences a step in fp32, or another backbone. A recorded run's checkpoints and model are
    dropped unless `keep_models` (an LLM run dir holds ~3.4 GB; the curve makes 28 of them)."""
    out = Path(output)
    own = {system: {**(overrides or {}), **((per_system or {}).get(system) or {})} for system in systems}
    backbone = {}
    for system in systems:  # every backbone found before the first run, not after an hour of the other system's
        cfg = SYSTEMS[system](config, own[system])
        resolve(cfg.model.backbone, cfg.model.gguf_file)
        backbone[system] = cfg.model.backbone
    prev = json.loads((out / "results.json").read_text())["rows"] if (out / "results.json").is_file() else []
    done = {(r["system"], r["sentences"], r["seed"]): r for r in prev}  # earlier calls' points stay in the results
    for r in prev:  # a point of another backbone is not this curve's: never reused, never mixed in
        if r["system"] in backbone and r.get("backbone", backbone[r["system"]]) != backbone[r["system"]]:
            raise DataError(f"{out / 'results.json'} holds {r['system']} points of {r['backbone']}, not "
                            f"{backbone[r['system']]}: give another --output for this curve")
    # the whole split, not the config's first `max_train_sentences` (the quickstart's 2,000): that cap is its budget
    # (`budgeted`), and the sizes above it (4,000, all) and the simulation's shuffle are of the whole split
    train_s = load_split(load_config(config, {**(overrides or {}), "data.max_train_sentences": None}), "train") or []
    for seed in seeds:
        order = shuffled(train_s, seed)
        for size in sizes:
            if seed != seeds[0] and (size is None or size > seeds_up_to):
                continue
            n = len(order) if size is None else min(size, len(order))
            for system in systems:
                if (system, n, seed) in done:  # recorded: its run dir may be gone (results are kept, models not)
                    continue
                cfg = SYSTEMS[system](config, {**own[system], "training.seed": seed})
                run_dir = out / f"{system}_{n}_{seed}"
                s = train_on(cfg, order[:n], run_dir, progress)
                done[(system, n, seed)] = {"system": system, "sentences": n, "seed": seed,
                                           "backbone": cfg.model.backbone, "head": "crf" if cfg.model.crf else "linear",
                                           "dev_f1": s["best_dev_f1"], "test_f1": (s.get("test") or {}).get("f1"),
                                           "train_seconds": s["train_seconds"]}
                save(out, config, list(done.values()))
                if not keep_models:
                    rundir.drop_weights(run_dir)
    return list(done.values())


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample sd over seeds per (system, size)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["system"], r["sentences"]), []).append(r)
    out = []
    for (system, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        test = [r["test_f1"] for r in rs if r["test_f1"] is not None]
        out.append({"system": system, "sentences": n, "seeds": len(rs),
                    "test_f1": round(statistics.mean(test), 2) if test else None,
                    "test_f1_sd": round(statistics.stdev(test), 2) if len(test) > 1 else None,
                    "train_minutes": round(statistics.mean(r["train_seconds"] for r in rs) / 60, 2)})
    return out


def trained(curve: dict) -> dict[str, dict]:
    """What each system of a curve's results trained: {system: {"backbone", "head"}} (rows of curves run before the
    backbone was recorded name the system only)."""
    return {r["system"]: {"backbone": r["backbone"], "head": r["head"]} for r in curve["rows"] if "backbone" in r}


def table(rows: list[dict]) -> str:
    lines = ["| training sentences | system | seeds | test F1 | train min |", "|---|---|---|---|---|"]
    for r in summarise(rows):
        f1 = "n/a" if r["test_f1"] is None else f"{r['test_f1']:.2f}" + (
            f" ± {r['test_f1_sd']:.2f}" if r["test_f1_sd"] is not None else "")
        lines.append(f"| {r['sentences']:,} | {r['system']} | {r['seeds']} | {f1} | {r['train_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def save(out: Path, config: str, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps({"config": config, "rows": rows,
                                                        "summary": summarise(rows)}, indent=2) + "\n")
    atomic_write_text(out / "results.md", table(rows))
