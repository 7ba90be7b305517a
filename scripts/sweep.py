"""Sweep one config key and tabulate dev (and test) F1 — used to choose defaults (see docs/results.md) — or repeat a
run over seeds and report mean ± standard deviation (the spread every small-budget difference must be set against).

    python scripts/sweep.py --config quickstart --key training.learning_rate --values 3e-5 1e-4 3e-4 \
        --set data.max_train_sentences=500 --set data.max_dev_sentences=300 --set data.test=null \
        --set training.epochs=1 --output runs/sweep_lr
    python scripts/sweep.py --config quickstart --key training.seed --values 1 2 3 --output runs/seeds_llm
    python scripts/sweep.py --encoder --config quickstart --key training.seed --values 1 2 3 --output runs/seeds_enc

A finished run (its dir has summary.json and test metrics) is reused, so an interrupted sweep continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from llm_ner import rundir
from llm_ner.baselines.encoder import encoder_config
from llm_ner.config import load_config, parse_set
from llm_ner.training.train import train


def spread(values: list[float]) -> str:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return "n/a"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--key", required=True, help="dotted config key to vary")
    ap.add_argument("--values", nargs="+", required=True, help="values (parsed as YAML)")
    ap.add_argument("--set", action="append", default=[], help="fixed overrides key=value")
    ap.add_argument("--output", default="runs/sweep")
    ap.add_argument("--encoder", action="store_true", help="sweep the encoder baseline (its defaults on the config)")
    a = ap.parse_args()
    out = Path(a.output)
    rows = []
    for v in a.values:
        val = yaml.safe_load(v)
        over = {**parse_set(a.set), a.key: val, "output": str(out / f"{v}")}
        cfg = encoder_config(a.config, over) if a.encoder else load_config(a.config, over)
        t0 = time.time()
        done = out / f"{v}" / rundir.SUMMARY
        s = json.loads(done.read_text()) if done.is_file() else train(cfg, progress=False)
        rows.append({"value": v, "best_dev_f1": s["best_dev_f1"], "test_f1": (s.get("test") or {}).get("f1"),
                     "train_seconds": s["train_seconds"], "total_seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"key": a.key, "fixed": a.set, "config": a.config, "rows": rows},
                                                 indent=2))
    lines = [f"| {a.key} | best dev F1 | test F1 | train s |", "|---|---|---|---|"]
    lines += [f"| {r['value']} | {r['best_dev_f1']} | {r['test_f1']} | {r['train_seconds']} |" for r in rows]
    lines.append(f"| mean ± sd | {spread([r['best_dev_f1'] for r in rows])} | {spread([r['test_f1'] for r in rows])} "
                 "| |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
