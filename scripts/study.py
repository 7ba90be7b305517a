"""The decoder study (issue 13): at the quickstart budget, what each decoder-only option does — causal, unmasking all /
the middle third / the upper half, sequence repetition r = 2 and 4, early exit at 2/3 and 3/4 depth, document
context, and Gemma 3 270M against SmolLM2-135M. Each row is real training runs (one per seed); a finished run is
reused, so an interrupted study continues. Results go to OUTPUT/results.json (read by `llm-ner report --study`) and
OUTPUT/results.md.

    python scripts/study.py --output runs/study                       # every row, seed 42
    python scripts/study.py --output runs/study --seeds 1 2 3 --only "unmask all (quickstart)" "causal"
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from llm_ner import rundir
from llm_ner.config import load_config
from llm_ner.report import study_table
from llm_ner.training.train import train

# Every row is SmolLM2-135M (the quickstart's backbone when the study was run; the study chose Gemma 3 270M, and
# issue 33 then EmbeddingGemma-300M) unless the row says otherwise, on the quickstart's recipe of that time (pinned
# here, with the config's per-backbone `recipes:` left out, so the recorded rows repeat). SmolLM2-135M has 30 decoder
# layers: 2/3 depth = layer 20, 3/4 = 22.5 -> 23.
BASE = {"model.backbone": "smollm2-135m", "model.unmask": "all", "training.learning_rate": 2e-4,
        "training.head_learning_rate": 1e-3, "training.batch_size": 16}
# conll2003_full_gemma's model choices
GEMMA_FULL = {"model.backbone": "gemma3-270m", "model.exit_layer": 12, "model.unmask": [5, 11]}
ROWS: dict[str, dict] = {
    "causal": {"model.unmask": "none"},
    "unmask all (quickstart)": {},
    "unmask middle third": {"model.unmask": "middle_third"},
    "unmask upper half": {"model.unmask": "upper_half"},
    "repeat r=2 (causal)": {"model.transform": "repeat", "model.repeat": 2},
    "repeat r=4 (causal)": {"model.transform": "repeat", "model.repeat": 4},
    "exit at 2/3 depth (layer 20)": {"model.exit_layer": 20},
    "exit at 3/4 depth (layer 23)": {"model.exit_layer": 23},
    # training.batch_size counts windows: a document window holds ~10 sentences, so at the quickstart's 16 a step one
    # epoch of 2,000 sentences is 16 optimizer steps (measured: it does not learn); 2 a step keeps ~125 steps
    "document context, 16 windows a step": {"data.context": "document"},
    "Gemma 3 270M (unmask all)": {"model.backbone": "gemma3-270m"},
    "document context, 2 windows a step": {"data.context": "document", "training.batch_size": 2},
    # Gemma 3 270M (issue 22): 18 layers, every 6th global (5, 11, 17), the others sliding with a 512-token window --
    # longer than any window we feed (<= 256 tokens), so unmasked, a sliding layer sees the whole window both ways.
    # What is left to choose: whether the sliding layers are unmasked at all, where to exit, and document context.
    "Gemma: unmask all (the quickstart)": {"model.backbone": "gemma3-270m"},
    "Gemma: unmask the global layers only (5, 11, 17)": {"model.backbone": "gemma3-270m", "model.unmask": [5, 11, 17]},
    "Gemma: exit at 2/3 depth (layer 12)": {"model.backbone": "gemma3-270m", "model.exit_layer": 12},
    "Gemma: exit at 5/6 depth (layer 15)": {"model.backbone": "gemma3-270m", "model.exit_layer": 15},
    "Gemma: document context, 2 windows a step": {"model.backbone": "gemma3-270m", "data.context": "document",
                                                  "training.batch_size": 2},
    # the two rows that helped (issue 22), together
    "Gemma: exit at layer 12, unmask the global layers (5, 11) only": {
        "model.backbone": "gemma3-270m", "model.exit_layer": 12, "model.unmask": [5, 11]},
    # Issue 22, open questions: the full-data Gemma runs (exit 12 + global unmask, SmolLM2's lr 2e-4) ended below
    # SmolLM2 with dev still rising — is the rate wrong for Gemma? And document context did not learn at 2 windows a
    # step (~100 steps) — too few steps, or too high a rate for ~10x longer windows?
    "Gemma (exit 12, global unmask): lr 1e-4": {**GEMMA_FULL, "training.learning_rate": 1e-4},
    "Gemma (exit 12, global unmask): lr 4e-4": {**GEMMA_FULL, "training.learning_rate": 4e-4},
    "Gemma (exit 12, global unmask): document context, 1 window a step": {
        **GEMMA_FULL, "data.context": "document", "training.batch_size": 1},
    "Gemma (exit 12, global unmask): document context, 2 windows a step, lr 1e-4": {
        **GEMMA_FULL, "data.context": "document", "training.batch_size": 2, "training.learning_rate": 1e-4},
    # issue 22 item 1, fewer matmuls: the lower half of the 12 layers kept as pre-trained, the backward stops there
    "Gemma (exit 12, global unmask): freeze the lower 6 layers": {**GEMMA_FULL, "model.freeze_layers": 6},
}
# Run directories are named by a row's position above: add rows at the end.


def mean_sd(xs: list[float]) -> tuple[float, float | None]:
    return round(statistics.mean(xs), 2), (round(statistics.stdev(xs), 2) if len(xs) > 1 else None)


def run_row(config: str, name: str, over: dict, seeds: list[int], out: Path, recorded: dict[int, dict]) -> dict:
    """`recorded`: seed -> its run as results.json holds it; reused even when the run dir is gone (results are kept,
    models not), so results.json alone is enough to go on from."""
    runs = []
    for seed in seeds:
        if seed in recorded:
            runs.append(recorded[seed])
            continue
        run_dir = out / f"{list(ROWS).index(name)}_{seed}"
        done = run_dir / rundir.SUMMARY
        if done.is_file():
            s = json.loads(done.read_text())
        else:
            s = train(load_config(config, {**BASE, **over, "training.seed": seed, "output": str(run_dir)},
                                  base={"recipes": {}}),
                      progress=False)
        runs.append({"seed": seed, "dev_f1": s["best_dev_f1"], "test_f1": s["test"]["f1"],
                     "train_seconds": s["train_seconds"], "predict_words_per_s": s["test_words_per_second"],
                     "run_dir": str(run_dir)})
    dev, dev_sd = mean_sd([r["dev_f1"] for r in runs])
    test, test_sd = mean_sd([r["test_f1"] for r in runs])
    return {"name": name, "overrides": over, "runs": runs, "dev_f1": dev, "dev_f1_sd": dev_sd, "test_f1": test,
            "test_f1_sd": test_sd, "train_seconds": round(statistics.mean(r["train_seconds"] for r in runs), 1),
            "predict_words_per_s": round(statistics.mean(r["predict_words_per_s"] for r in runs), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--output", default="runs/study")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--only", nargs="*", help="row names to run (default: all)")
    a = ap.parse_args()
    out = Path(a.output)
    res_path = out / "results.json"
    prev = json.loads(res_path.read_text()) if res_path.is_file() else {"rows": []}
    rows = {r["name"]: r for r in prev["rows"]}
    for name, over in ROWS.items():
        if a.only and name not in a.only:
            continue
        recorded = {r["seed"]: r for r in rows.get(name, {}).get("runs", [])}
        rows[name] = run_row(a.config, name, over, sorted({*a.seeds, *recorded}), out, recorded)
        out.mkdir(parents=True, exist_ok=True)
        ordered = [rows[n] for n in ROWS if n in rows]
        res_path.write_text(json.dumps({"config": a.config, "rows": ordered}, indent=2) + "\n")  # resumable
        (out / "results.md").write_text(study_table(ordered))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
