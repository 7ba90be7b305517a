"""Issue 22 item 3: which recalibration of entity scores holds off the training distribution. One forward pass per
evaluation set (kept word logits, `Scorer`); every entity's score at T = 1, whether it is right (exact span and type),
its type, length, and whether its surface form was seen with that type in training. Each method is fitted on one set
(dev, or a slice of train the model never saw) and its ECE is measured on every set.

    python scripts/calibration_study.py --model runs/quickstart/model --train conll2003:train --seen-first 2000 \\
        --fit conll2003:valid:500 conll2003:train:2000-4000 --eval conll2003:valid conll2003:test cleanconll:test \\
        --output docs/calibration_study.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from llm_ner.data import load_corpus, spans
from llm_ner.evaluation.calibrate import fit_temperature
from llm_ner.evaluation.evaluate import calibration_metrics
from llm_ner.inference.engine import NERModel, Scorer


def load(spec: str):
    """name:split[:N | :A-B] -> sentences."""
    parts = spec.split(":")
    sents = load_corpus(":".join(parts[:2]))
    if len(parts) > 2:
        a, _, b = parts[2].partition("-")
        sents = sents[int(a) : int(b)] if b else sents[: int(a)]
    return sents


def entities(sents, tags, confs, seen: set) -> list[dict]:
    out = []
    for s, p, c in zip(sents, tags, confs, strict=True):
        gold = set(spans(s.tags))
        for typ, a, b in spans(p):
            form = " ".join(s.tokens[a : b + 1])
            out.append({"score": sum(c[a : b + 1]) / (b - a + 1), "ok": (typ, a, b) in gold, "type": typ,
                        "len": b - a + 1, "seen": (form, typ) in seen})
    return out


def ece(scores, ents) -> float:
    return calibration_metrics([(float(s), e["ok"], e["type"]) for s, e in zip(scores, ents, strict=True)], 1)["ece"]


def logit(p):
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


TYPES = ["LOC", "MISC", "ORG", "PER"]


def features(ents, rich: bool) -> np.ndarray:
    x = [[logit(e["score"])] for e in ents]
    if rich:
        x = [[logit(e["score"]), float(e["seen"]), math.log(e["len"]), *(float(e["type"] == t) for t in TYPES)]
             for e in ents]
    return np.asarray(x, dtype=float)


def methods(fit_ents, fit_scorer, n_gold):
    """name -> function(eval entities at T=1, eval entities at the fitted T) -> scores."""
    T, _ = fit_temperature(fit_scorer, n_gold)
    y = np.array([e["ok"] for e in fit_ents])
    platt = LogisticRegression(C=1e4).fit(features(fit_ents, False), y)
    rich = LogisticRegression(C=1.0, max_iter=1000).fit(features(fit_ents, True), y)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit([e["score"] for e in fit_ents], y)
    by_seen = {}
    for flag in (True, False):
        sub = [e for e in fit_ents if e["seen"] == flag]
        by_seen[flag] = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(
            [e["score"] for e in sub], [e["ok"] for e in sub]) if len(sub) > 20 else iso
    return T, {
        "as trained (T = 1)": lambda e1, _eT: [e["score"] for e in e1],
        f"temperature (T = {T:.2f})": lambda _e1, eT: [e["score"] for e in eT],
        "Platt on the score's logit": lambda e1, _eT: platt.predict_proba(features(e1, False))[:, 1],
        "isotonic on the score": lambda e1, _eT: iso.predict([e["score"] for e in e1]),
        "isotonic per seen / unseen": lambda e1, _eT: [by_seen[e["seen"]].predict([e["score"]])[0] for e in e1],
        "logistic: logit, seen, length, type": lambda e1, _eT: rich.predict_proba(features(e1, True))[:, 1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", default="conll2003:train")
    ap.add_argument("--seen-first", type=int, default=None, help="the model trained on the first N train sentences")
    ap.add_argument("--fit", nargs="+", default=["conll2003:valid:500"])
    ap.add_argument("--eval", nargs="+", default=["conll2003:valid", "conll2003:test", "cleanconll:test"])
    ap.add_argument("--output", default=None)
    a = ap.parse_args()
    train = load_corpus(a.train)[: a.seen_first] if a.seen_first else load_corpus(a.train)
    seen = {(" ".join(s.tokens[x : y + 1]), t) for s in train for t, x, y in spans(s.tags)}
    ner = NERModel.from_pretrained(a.model)
    scorers = {spec: Scorer(ner, load(spec)) for spec in dict.fromkeys(a.fit + a.eval)}
    ents1 = {k: entities(sc.sentences, *sc.at(1.0), seen) for k, sc in scorers.items()}
    result = {"model": a.model, "fits": []}
    for fit in a.fit:
        sc = scorers[fit]
        n_gold = sum(len(spans(s.tags)) for s in sc.sentences)
        T, ms = methods(ents1[fit], sc, n_gold)
        entsT = {k: entities(s.sentences, *s.at(T), seen) for k, s in scorers.items()}
        rows = {name: {ev: round(ece(fn(ents1[ev], entsT[ev]), ents1[ev]), 4) for ev in a.eval}
                for name, fn in ms.items()}
        result["fits"].append({"fitted_on": fit, "temperature": T, "ece": rows})
        print(f"\nfitted on {fit} (T = {T:.2f}); ECE on:")
        print("| method | " + " | ".join(a.eval) + " |\n|---|" + "---|" * len(a.eval))
        for name, r in rows.items():
            print(f"| {name} | " + " | ".join(f"{r[ev]:.4f}" for ev in a.eval) + " |")
    shares = {k: round(sum(e["seen"] for e in v) / max(len(v), 1), 3) for k, v in ents1.items()}
    acc = {k: {flag: round(float(np.mean([e["ok"] for e in v if e["seen"] == flag] or [0])), 3)
               for flag in (True, False)} for k, v in ents1.items()}
    result["seen_share"], result["accuracy_seen_unseen"] = shares, acc
    print("\nshare of predicted entities seen in training:", shares)
    print("accuracy (seen / unseen):", acc)
    if a.output:
        Path(a.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
