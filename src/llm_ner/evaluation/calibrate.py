"""Entity scores a user can act on: temperature scaling fitted on held-out data, and score thresholds.

An entity's score is the model's probability of exactly that entity (model.decode). Fine-tuned networks are
over-confident; temperature scaling (Guo et al., 2017) divides every logit — and, with a CRF, every transition, start
and end score — by one scalar T fitted on held-out data. The decoded tags never change (Viterbi's argmax is invariant
to a positive scale), so F1 stays exactly the same; only the scores move. T is chosen on a grid by the log loss of
"this entity is right" (exact span and type) against its score, then the expected calibration error is reported
before and after. Thresholds: per type, the lowest score at which the entities kept reach a target precision.

The model's forward pass runs once; each candidate T only re-decodes the kept word logits.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from .. import rundir
from ..data import Sentence, spans
from ..fsutil import atomic_write_text
from ..inference.engine import NERModel, Scorer
from .evaluate import calibration_metrics, scored_entities

log = logging.getLogger(__name__)

GRID = [round(0.5 * 1.1**k, 4) for k in range(30)]  # 0.5 ... 7.9, 10 % apart


def log_loss(scored: Sequence[tuple[float, bool, str]]) -> float:
    eps = 1e-6
    return -sum(math.log(min(max(sc if ok else 1 - sc, eps), 1.0)) for sc, ok, _ in scored) / max(len(scored), 1)


def fit_temperature(scorer: Scorer, n_gold: int, grid: Sequence[float] = GRID) -> tuple[float, list[dict]]:
    """The T of `grid` with the lowest log loss of entity correctness; and every T's (log loss, ECE)."""
    gold = [s.tags for s in scorer.sentences]
    rows = []
    for t in grid:
        scored = scored_entities(gold, *scorer.at(t))
        rows.append({"temperature": t, "log_loss": log_loss(scored),
                     "ece": calibration_metrics(scored, n_gold)["ece"]})
    best = min(rows, key=lambda r: r["log_loss"])
    return best["temperature"], rows


def thresholds_for_precision(scored: Sequence[tuple[float, bool, str]], target: float) -> dict[str, float]:
    """Per type, the lowest score threshold whose kept entities (score >= it) reach `target` precision (0-1); a
    type that never reaches it gets 1.01 (nothing kept: every entity of it goes to review)."""
    out = {}
    for typ in sorted({t for _, _, t in scored}):
        ents = sorted(((sc, ok) for sc, ok, t in scored if t == typ), reverse=True)
        best, right = 1.01, 0
        for k, (sc, ok) in enumerate(ents, 1):  # keep the k highest-scored: precision right / k
            right += ok
            if right / k >= target and (k == len(ents) or ents[k][0] < sc):  # cut between distinct scores only
                best = sc
        out[typ] = round(best, 4)
    return out


def calibrate(model_dir: str | Path, sentences: Sequence[Sentence], data_name: str,
              target_precision: float | None = None, ner: NERModel | None = None) -> dict:
    """Fit T on `sentences`, optionally per-type thresholds for a target precision, write calibration.json into the
    model dir (the prediction paths read it), and return what was measured."""
    model_dir = Path(model_dir)
    ner = ner or NERModel.from_pretrained(model_dir)
    scorer = Scorer(ner, sentences)
    gold = [s.tags for s in sentences]
    n_gold = sum(len(spans(g)) for g in gold)
    before = calibration_metrics(scored_entities(gold, *scorer.at(1.0)), n_gold)
    t, grid = fit_temperature(scorer, n_gold)
    scored = scored_entities(gold, *scorer.at(t))
    after = calibration_metrics(scored, n_gold)
    cal = {"temperature": t, "fitted_on": data_name, "sentences": len(sentences), "ece_before": before["ece"],
           "ece_after": after["ece"], "grid": grid}
    if target_precision is not None:
        cal["target_precision"] = target_precision
        cal["thresholds"] = thresholds_for_precision(scored, target_precision)
    atomic_write_text(model_dir / rundir.CALIBRATION, json.dumps(cal, indent=2) + "\n")
    ner.temperature, ner.calibration = t, cal
    log.info("calibrated on %s (%d sentences): temperature %.3f, entity-score ECE %.4f -> %.4f", data_name,
             len(sentences), t, before["ece"], after["ece"])
    return {**cal, "before": before, "after": after}
