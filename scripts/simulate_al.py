"""Issue 23 item 5: active learning simulated on CoNLL-2003, the labels hidden until "annotated". Per seed: a shuffled
train split; the first `--start` sentences are labelled, a pool of the next `--pool` sentences is unlabelled; each round
trains the quickstart recipe from the backbone on what is labelled, scores dev and test, then "annotates" `--step` more
pool sentences chosen by the strategy (`llm-ner select`'s own function: `uncertainty`, the least sure by MNLP;
`diverse`, the least sure spread over k-means groups; `random`). Both strategies share a seed's start set and pool, so
they are compared paired. A finished round is reused, and so is a round recorded in OUTPUT/results.json with its picks:
an interrupted simulation continues, from results.json alone if the run dirs are gone. Results: OUTPUT/results.json and
results.md (read by `llm-ner report --al`).

    python scripts/simulate_al.py --output runs/al --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from llm_ner import rundir
from llm_ner.active.curve import shuffled, train_on
from llm_ner.active.select import candidates, select, text_key
from llm_ner.config import load_config, parse_set
from llm_ner.data import load_corpus
from llm_ner.fsutil import atomic_write_text
from llm_ner.inference.engine import NERModel
from llm_ner.modeling.processor import texts_and_offsets


def run_round(config: str, overrides: dict, labelled: list, seed: int, run_dir: Path) -> dict:
    """Train on the labelled sentences at the config's budget (`train_on`: 200 sentences get the quickstart's 125
    optimizer steps), or reuse a finished run: labelled sentences / tokens / entities, dev / test F1, training
    seconds."""
    s = train_on(load_config(config, {**overrides, "training.seed": seed}), labelled, run_dir)
    data = s["data"]["train"]  # an annotator's effort goes with tokens and entities, not only sentences
    return {"labelled": len(labelled), "tokens": data["tokens"], "entities": data["entities"],
            "dev_f1": s["best_dev_f1"], "test_f1": s["test"]["f1"], "train_seconds": s["train_seconds"]}


def choose(strategy: str, run_dir: Path, pool: list, labelled: list, n: int, seed: int) -> tuple[list[int], float]:
    """Indices into `pool` of the next `n` to annotate, and the seconds the choice took. As `llm-ner select` does:
    a repeat of a labelled sentence (CoNLL has many, e.g. score lines) is never chosen."""
    t0 = time.perf_counter()
    texts = texts_and_offsets(pool)[0]
    allowed = candidates(texts, n, strategy, {text_key(t) for t in texts_and_offsets(labelled)[0]}, "pool")
    if strategy == "random":
        chosen = random.Random(seed).sample(allowed, n)
    else:
        chosen = select(NERModel.from_pretrained(run_dir / rundir.MODEL), allowed, n, strategy, seed).texts
    where = {t: i for i, t in enumerate(texts)}
    return [where[t] for t in chosen], time.perf_counter() - t0


def simulate(a, seed: int, strategy: str, train_s: list, recorded: list[dict], save) -> list[dict]:
    """One seed's rounds for one strategy. `recorded`: its rows from an earlier results.json — a row with its picks
    is reused as it is (its run dir may be gone: results are kept, models not), so results.json alone is enough to
    go on from. `save(rows)` records each round as it finishes."""
    order = shuffled(train_s, seed)  # the learning curve's order: its first points are this random arm's
    labelled, pool = order[: a.start], order[a.start : a.start + a.pool]
    rows, out = [], Path(a.output) / f"seed_{seed}"
    for r in range(a.rounds + 1):
        # round 0 is the same for both strategies: one run
        run_dir = out / ("round_0" if r == 0 else f"{strategy}_round_{r}")
        row = recorded[r] if r < len(recorded) else None
        needs_model = r < a.rounds and strategy != "random" and "picks" not in (row or {})
        if row is None or (needs_model and not (run_dir / rundir.MODEL).is_dir()):
            row = {"round": r, **run_round(a.config, a.overrides, labelled, seed, run_dir)}
        rows.append(row)
        if r < a.rounds and "picks" not in row:  # the last round chooses nothing
            picks, secs = choose(strategy, run_dir, pool, labelled, a.step, seed * 1000 + r)
            rows[-1] |= {"picks": picks, "select_seconds": round(secs, 1)}
        save(rows)
        if not a.keep_models:  # recorded with its picks: the weights are not needed again
            rundir.drop_weights(run_dir, model=r > 0 or r == a.rounds)  # round 0's model: every strategy's chooser
        if r == a.rounds:
            break
        labelled += [pool[i] for i in rows[-1]["picks"]]
        taken = set(rows[-1]["picks"])
        pool = [p for i, p in enumerate(pool) if i not in taken]
    return rows


def _pm(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f}" + (f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")


def table(results: dict) -> str:
    lines = ["| strategy | labelled | tokens (mean) | dev F1 | test F1 | train s (mean) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for strategy, runs in results.items():
        for r in range(max((len(rows) for rows in runs.values()), default=0)):
            pts = [rows[r] for rows in runs.values() if len(rows) > r]
            dev, test = [p["dev_f1"] for p in pts], [p["test_f1"] for p in pts]
            tokens = statistics.mean(p["tokens"] for p in pts)  # every row is rebuilt from its run's summary
            lines.append(f"| {strategy} | {pts[0]['labelled']} | {tokens:,.0f} | {_pm(dev)} | {_pm(test)} | "
                         f"{statistics.mean(p['train_seconds'] for p in pts):.0f} | {len(pts)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quickstart")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as `llm-ner train --set` (repeatable)")
    ap.add_argument("--train", default="conll2003:train", help="the labelled data the simulation hides and reveals")
    ap.add_argument("--output", default="runs/al")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--strategies", nargs="+", default=["uncertainty", "random"])
    ap.add_argument("--start", type=int, default=200)
    ap.add_argument("--step", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pool", type=int, default=4000, help="unlabelled sentences to choose from (scored each round)")
    ap.add_argument("--keep-models", action="store_true",
                    help="keep each round's checkpoints and model (by default dropped once its picks are recorded)")
    a = ap.parse_args()
    a.overrides = parse_set(a.sets)
    train_s = load_corpus(a.train)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    prev = json.loads(res_path.read_text())["results"] if res_path.is_file() else {}
    results: dict = {s: dict(prev.get(s, {})) for s in a.strategies}
    for seed in a.seeds:
        for strategy in a.strategies:
            recorded = results[strategy].get(str(seed), [])
            others = [results[o][str(seed)][0] for o in a.strategies if results[o].get(str(seed))]
            if not recorded and others:  # round 0 is shared: another strategy's record of it will do
                recorded = [{k: v for k, v in others[0].items() if k not in ("picks", "select_seconds")}]

            def save(rows: list[dict], strategy: str = strategy, seed: int = seed) -> None:
                results[strategy][str(seed)] = rows
                atomic_write_text(res_path, json.dumps({"args": vars(a), "results": results}, indent=2) + "\n")
                atomic_write_text(out / "results.md", table(results))

            simulate(a, seed, strategy, train_s, recorded, save)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
