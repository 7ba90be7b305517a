"""Ablation on small settings: unmasking none / upper half / all, CRF on/off, full vs LoRA vs frozen backbone.
Each row is one real training run; results go to OUTPUT/results.json (read by `llm-ner report`) and results.md.

    python scripts/ablation.py --output runs/ablation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llm_ner.config import load_config
from llm_ner.train import train

SMALL = {"data.max_train_sentences": 500, "data.max_dev_sentences": 300, "data.max_test_sentences": 1000,
         "training.epochs": 1, "training.learning_rate": 3e-4, "training.early_stopping_patience": None}
ROWS = {
    "full, unmask all, CRF (base)": {},
    "unmask none (causal)": {"model.unmask": "none"},
    "unmask upper half": {"model.unmask": "upper_half"},
    "no CRF (CE only)": {"model.crf": False, "loss.crf_weight": 0.0},
    "LoRA r=16 (lr 1e-3)": {"training.mode": "lora", "training.learning_rate": 1e-3},
    "frozen backbone (head+CRF)": {"training.mode": "frozen"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--output", default="runs/ablation")
    ap.add_argument("--only", nargs="*", help="row names to run (default: all)")
    a = ap.parse_args()
    out = Path(a.output)
    res_path = out / "results.json"
    done = json.loads(res_path.read_text())["rows"] if res_path.is_file() else []
    names = {r["name"] for r in done}
    for k, (name, over) in enumerate(ROWS.items()):
        if name in names or (a.only and name not in a.only):
            continue
        cfg = load_config(a.config, {**SMALL, **over, "output": str(out / f"row{k}")})
        t0 = time.time()
        s = train(cfg, progress=False)
        done.append({"name": name, "overrides": over, "test_f1": s["test"]["f1"], "best_dev_f1": s["best_dev_f1"],
                     "train_seconds": s["train_seconds"], "trainable_params": s["parameters"]["trainable"],
                     "total_seconds": round(time.time() - t0, 1), "run_dir": str(out / f"row{k}")})
        out.mkdir(parents=True, exist_ok=True)
        res_path.write_text(json.dumps({"settings": SMALL, "rows": done}, indent=2))  # after every row: resumable
    lines = ["| variant | test F1 | dev F1 | train s | trainable params |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['test_f1']:.2f} | {r['best_dev_f1']:.2f} | {r['train_seconds']:.0f} | "
              f"{r['trainable_params']:,} |" for r in done]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
