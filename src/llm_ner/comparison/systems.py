"""System A vs system B (the MultiNERD assignment): A learns every entity type, B only a kept subset (all other
types become O). Both are scored on the same test set with the same scorer; for a fair comparison A is also scored
with its predictions *and* the gold restricted to B's types ("A on shared types"), which is exactly what B sees."""

from __future__ import annotations

import json
from pathlib import Path

from .. import rundir as R
from ..config import ConfigError, RunConfig
from ..data import Sentence, remap
from ..evaluation.evaluate import compute_metrics
from ..fsutil import atomic_write_text


def _run(cfg: RunConfig, out: Path, keep: list[str] | None, rerun: bool, progress: bool) -> Path:
    from ..training.train import train

    c = cfg.model_copy(deep=True)
    c.output = str(out)
    c.data.keep_types = keep
    if rerun or not R.is_finished(out):
        train(c, progress=progress)
    return out


def run_ab(cfg: RunConfig, keep: list[str], output: str | Path, rerun: bool = False, progress: bool = True) -> dict:
    if not cfg.data.test:
        raise ConfigError("system A/B needs a test set (data.test)")
    out = Path(output)
    a_dir = _run(cfg, out / "system_a", cfg.data.keep_types, rerun, progress)
    b_dir = _run(cfg, out / "system_b", keep, rerun, progress)
    a_s, a_p = R.load_run(a_dir).predictions()
    b_s, b_p = R.load_run(b_dir).predictions()
    a_full = compute_metrics([s.tags for s in a_s], a_p)
    # Restrict A to B's types: gold and predictions both lose every other type.
    a_gold_r = [s.tags for s in remap(a_s, keep=keep)]
    a_pred_r = [s.tags for s in remap([Sentence(s.tokens, p) for s, p in zip(a_s, a_p, strict=True)], keep=keep)]
    a_shared = compute_metrics(a_gold_r, a_pred_r)
    b = compute_metrics([s.tags for s in b_s], b_p)
    result = {"keep": keep, "system_a": a_full, "system_a_shared": a_shared, "system_b": b,
              "runs": {"a": str(a_dir), "b": str(b_dir)}}
    md = table(result)
    atomic_write_text(out / "systems_ab.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "systems_ab.md", md + "\n")
    return result


def table(r: dict) -> str:
    keep = r["keep"]
    a, a_sh, b = r["system_a"], r["system_a_shared"], r["system_b"]
    lines = ["| type | A (all types) F1 | B (kept types) F1 | support |", "|---|---|---|---|"]
    for t in sorted(a["per_type"]):
        bf = b["per_type"].get(t, {}).get("f1")
        lines.append(f"| {t}{'' if t in keep else ' (A only)'} | {a['per_type'][t]['f1']:.2f} | "
                     f"{'n/a' if bf is None else f'{bf:.2f}'} | {a['per_type'][t]['support']} |")
    lines += [
        f"| **micro, all of A's types** | {a['f1']:.2f} | n/a | {a['gold_entities']} |",
        f"| **micro, shared types ({', '.join(keep)})** | {a_sh['f1']:.2f} | {b['f1']:.2f} | "
        f"{a_sh['gold_entities']} |",
        f"| **macro, shared types** | {a_sh['macro_f1']:.2f} | {b['macro_f1']:.2f} | |",
    ]
    return "\n".join(lines)
