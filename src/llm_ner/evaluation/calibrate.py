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
from ..errors import UserError
from ..fsutil import atomic_write_text
from ..inference.confidence import Logistic
from ..inference.engine import NERModel, Scorer
from .evaluate import calibration_metrics, scored_entities

log = logging.getLogger(__name__)

GRID = [round(0.5 * 1.1**k, 4) for k in range(30)]  # 0.5 ... 7.9, 10 % apart


def log_loss(scored: Sequence[tuple[float, bool, str]]) -> float:
    eps = 1e-6
    return -sum(math.log(min(max(sc if ok else 1 - sc, eps), 1.0)) for sc, ok, _ in scored) / max(len(scored), 1)


def by_temperature(scorer: Scorer, grid: Sequence[float] = GRID) -> dict[float, list[list[tuple[float, bool, str]]]]:
    """For each T of `grid`, per sentence, its entities as (score at T, right, type): one decode per T, no forward."""
    gold = [s.tags for s in scorer.sentences]
    return {t: [scored_entities([g], [p], [c]) for g, p, c in zip(gold, *scorer.at(t), strict=True)] for t in grid}


def pick_temperature(by_t: dict[float, list], idx: Sequence[int], n_gold: int = 1) -> tuple[float, list[dict]]:
    """The T with the lowest log loss of entity correctness over the sentences `idx`; and every T's (log loss,
    ECE)."""
    rows = []
    for t, per_sentence in by_t.items():
        scored = _flat(per_sentence, idx)
        rows.append({"temperature": t, "log_loss": log_loss(scored), "ece": calibration_metrics(scored, n_gold)["ece"]})
    return min(rows, key=lambda r: r["log_loss"])["temperature"], rows


def fit_temperature(scorer: Scorer, n_gold: int, grid: Sequence[float] = GRID) -> tuple[float, list[dict]]:
    """The T of `grid` with the lowest log loss of entity correctness; and every T's (log loss, ECE)."""
    return pick_temperature(by_temperature(scorer, grid), range(len(scorer.sentences)), n_gold)


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


METHODS = ("auto", "temperature", "logistic")


def entity_facts(sentences: Sequence[Sentence], tags, confs) -> list[list[tuple[float, bool, str, int, str]]]:
    """Per sentence, each predicted entity as (score, right, type, length, surface form)."""
    out = []
    for s, p, c in zip(sentences, tags, confs, strict=True):
        gold = set(spans(s.tags))
        out.append([(sum(c[a : b + 1]) / (b - a + 1), (typ, a, b) in gold, typ, b - a + 1,
                     " ".join(s.tokens[a : b + 1])) for typ, a, b in spans(p)])
    return out


def fit_logistic(facts: Sequence[tuple], seen: frozenset, types: Sequence[str]) -> Logistic | None:
    """The logistic of confidence.py fitted on entities (score at T = 1); None when they are all right or all wrong."""
    from sklearn.linear_model import LogisticRegression  # (scikit-learn: seqeval's own dependency)

    y = [ok for _, ok, *_ in facts]
    if len(set(y)) < 2:
        return None
    x = [Logistic.features(sc, (form, typ) in seen, n, typ, types) for sc, _, typ, n, form in facts]
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    return Logistic(tuple(float(w) for w in lr.coef_[0]), float(lr.intercept_[0]), tuple(types), seen)


def _ece(scored: Sequence[tuple[float, bool, str]]) -> float:
    return calibration_metrics(scored, 1)["ece"]


def _flat(rows, idx) -> list:
    return [e for i in idx for e in rows[i]]


def held_out_ece(facts, by_t: dict[float, list], seen: frozenset, types: Sequence[str]) -> dict[str, float]:
    """Each method fitted on one half of the sentences (even / odd) and its ECE measured on the other, both ways:
    the mean. What decides `auto` — a recalibration is kept only if it holds on data it was not fitted on."""
    n = len(facts)
    folds = (list(range(0, n, 2)), list(range(1, n, 2)))
    res: dict[str, list[float]] = {"temperature": [], "logistic": []}
    for fit, held in (folds, folds[::-1]):
        t, _ = pick_temperature(by_t, fit)
        res["temperature"].append(_ece(_flat(by_t[t], held)))
        lg = fit_logistic(_flat(facts, fit), seen, types)
        if lg is not None:
            res["logistic"].append(_ece([(lg.score(sc, form, typ, k), ok, typ)
                                         for sc, ok, typ, k, form in _flat(facts, held)]))
    return {m: round(sum(v) / len(v), 4) for m, v in res.items() if len(v) == 2}


def check_request(model_dir: str | Path, method: str, target_precision: float | None, has_training_data: bool
                  ) -> None:
    """What a calibration request must hold, as one-line errors: defined once, called by `calibrate` and, before any
    data is read, by the CLI."""
    if method not in METHODS:
        raise UserError(f"calibration method {method!r}: use one of {', '.join(METHODS)}")
    if target_precision is not None and not 0 < target_precision <= 1:
        raise UserError(f"target precision {target_precision}: give a precision between 0 and 1, e.g. 0.95")
    if method == "logistic" and not has_training_data:
        raise UserError(f"the logistic calibration needs the model's training data: {model_dir} is not inside a run "
                        "dir, give --train")


def calibrate(model_dir: str | Path, sentences: Sequence[Sentence], data_name: str,
              target_precision: float | None = None, ner: NERModel | None = None, method: str = "auto",
              seen: frozenset | None = None) -> dict:
    """Fit the entity-score calibration on `sentences` — a temperature, or the logistic of confidence.py (needs
    `seen`: the (form, type) pairs of the training data); `auto` takes the one with the lower held-out ECE
    (`held_out_ece`) — optionally per-type thresholds for a target precision; write calibration.json into the model
    dir (the prediction paths read it) and return what was measured."""
    check_request(model_dir, method, target_precision, seen is not None)
    model_dir = Path(model_dir)
    ner = ner or NERModel.from_pretrained(model_dir, precision="fp32")  # fitted as trained
    scorer = Scorer(ner, sentences)
    gold = [s.tags for s in sentences]
    n_gold = sum(len(spans(g)) for g in gold)
    facts = entity_facts(sentences, *scorer.at(1.0))
    before = calibration_metrics([(sc, ok, typ) for row in facts for sc, ok, typ, *_ in row], n_gold)
    by_t = by_temperature(scorer)
    t, grid = pick_temperature(by_t, range(len(sentences)), n_gold)
    types = list(ner.labels.types)
    held = held_out_ece(facts, by_t, seen, types) if seen is not None and method != "temperature" else {}
    if method == "logistic" and "logistic" not in held:
        raise UserError("the logistic calibration needs the training data's entities and held-out entities both "
                         "right and wrong")
    chosen = method if method != "auto" else min(held, key=held.get) if held else "temperature"
    cal = {"method": chosen, "temperature": t, "fitted_on": data_name, "sentences": len(sentences),
           "held_out_ece": held, "ece_before": before["ece"], "grid": grid}
    if chosen == "logistic":
        lg = fit_logistic(_flat(facts, range(len(facts))), seen, types)
        cal["logistic"] = lg.to_dict()
    ner.use_calibration(cal)
    served = scored_entities(gold, *scorer.at(ner.temperature, recalibrate=True))
    after = calibration_metrics(served, n_gold)
    cal["ece_after"] = after["ece"]
    if target_precision is not None:
        cal["target_precision"] = target_precision
        cal["thresholds"] = thresholds_for_precision(served, target_precision)
    atomic_write_text(model_dir / rundir.CALIBRATION, json.dumps(cal, indent=2) + "\n")
    ner.calibration = cal
    log.info("calibrated on %s (%d sentences): %s, entity-score ECE %.4f -> %.4f%s", data_name, len(sentences),
             "logistic recalibration" if chosen == "logistic" else f"temperature {t:.3f}", before["ece"],
             after["ece"], f" (held out: {held})" if held else "")
    return {**cal, "before": before, "after": after}
