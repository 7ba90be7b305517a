"""Metrics with seqeval in its default (conlleval-compatible) mode: entity-level micro P/R/F1 over exact-match spans,
macro F1 (mean over types), per-type P/R/F1/support, token accuracy — and the same entity scores in seqeval's strict
IOB2 mode (an I-X that does not continue an X entity is not an entity), since published numbers use either and differ
by up to ~0.5 F1. Also `score_files` for two CoNLL files, and the calibration of entity scores
(`calibration_metrics`: expected calibration error, precision and recall above score thresholds)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2

from ..data import DataError, Sentence, entity_types, read_conll, spans, to_iob2, write_conll
from ..fsutil import atomic_write_text
from ..inference.engine import Scorer

log = logging.getLogger(__name__)


def compute_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """gold/pred: tag sequences (IOB1 or IOB2, as conlleval reads them). Percentages are 0-100 like conlleval."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred, strict=True)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    gold, pred = [list(g) for g in gold], [list(p) for p in pred]
    rep = classification_report(gold, pred, output_dict=True, zero_division=0)
    per_type = {
        k: {"precision": 100 * v["precision"], "recall": 100 * v["recall"], "f1": 100 * v["f1-score"],
            "support": int(v["support"])}
        for k, v in rep.items() if not k.endswith(" avg")
    }
    micro = rep.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    strict = classification_report(gold, pred, output_dict=True, zero_division=0, mode="strict", scheme=IOB2)
    s_micro = strict.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    s_types = [v["f1-score"] for k, v in strict.items() if not k.endswith(" avg")]
    # seqeval's micro avg has no count of predicted spans; count them for the report.
    from seqeval.metrics.sequence_labeling import get_entities

    n_pred = len(get_entities(pred))
    n_gold = len(get_entities(gold))
    return {
        "accuracy": 100 * accuracy_score(gold, pred) if any(gold) else 0.0,
        "precision": 100 * micro["precision"],
        "recall": 100 * micro["recall"],
        "f1": 100 * micro["f1-score"],
        "macro_f1": sum(v["f1"] for v in per_type.values()) / len(per_type) if per_type else 0.0,
        "per_type": per_type,
        "strict": {"precision": 100 * s_micro["precision"], "recall": 100 * s_micro["recall"],
                   "f1": 100 * s_micro["f1-score"], "macro_f1": 100 * sum(s_types) / len(s_types) if s_types else 0.0},
        "gold_entities": n_gold,
        "pred_entities": n_pred,
        "sentences": len(gold),
        "tokens": sum(len(g) for g in gold),
    }


THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99)  # recorded in the metrics JSON
SHOWN_THRESHOLDS = (0.5, 0.9, 0.95)  # shown to a reader: evaluate's table, the quickstart, the report


def scored_entities(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                    confs: Sequence[Sequence[float]]) -> list[tuple[float, bool, str]]:
    """Each predicted entity as (score, correct = exact span and type in gold, type). Its score is the mean of its
    words' confidences (every word of an entity carries the entity's score, see model.decode)."""
    out = []
    for g, p, c in zip(gold, pred, confs, strict=True):
        gold_spans = set(spans(g))
        for typ, a, b in spans(p):
            out.append((sum(c[a : b + 1]) / (b - a + 1), (typ, a, b) in gold_spans, typ))
    return out


def calibration_metrics(scored: Sequence[tuple[float, bool, str]], n_gold: int, n_bins: int = 10,
                        thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Expected calibration error of entity scores over `n_bins` equal-width bins (sum over bins of the bin's share
    of entities times |accuracy - mean score|), the bins themselves (a reliability diagram), and precision / recall
    of the entities scored at or above each threshold."""
    bins = []
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        inb = [(sc, ok) for sc, ok, _ in scored if lo <= sc < hi or (k == n_bins - 1 and sc >= hi)]
        if inb:
            bins.append({"lo": lo, "hi": hi, "n": len(inb), "mean_score": sum(x for x, _ in inb) / len(inb),
                         "accuracy": sum(ok for _, ok in inb) / len(inb)})
    n = len(scored)
    ece = sum(b["n"] / n * abs(b["accuracy"] - b["mean_score"]) for b in bins) if n else 0.0
    table = []
    for t in thresholds:
        kept = [ok for sc, ok, _ in scored if sc >= t]
        table.append({"threshold": t, "entities": len(kept),
                      "precision": 100 * sum(kept) / len(kept) if kept else 0.0,
                      "recall": 100 * sum(kept) / n_gold if n_gold else 0.0})
    return {"ece": ece, "entities": n, "bins": bins, "thresholds": table}


def format_table(m: dict, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'type':<14}{'prec':>8}{'rec':>8}{'F1':>8}{'support':>9}")
    for t, v in sorted(m["per_type"].items()):
        lines.append(f"{t:<14}{v['precision']:8.2f}{v['recall']:8.2f}{v['f1']:8.2f}{v['support']:9d}")
    lines.append(f"{'micro':<14}{m['precision']:8.2f}{m['recall']:8.2f}{m['f1']:8.2f}{m['gold_entities']:9d}")
    lines.append(f"{'macro F1':<14}{'':16}{m['macro_f1']:8.2f}")
    if "strict" in m:
        s = m["strict"]
        lines.append(f"{'strict IOB2':<14}{s['precision']:8.2f}{s['recall']:8.2f}{s['f1']:8.2f}  (seqeval strict mode)")
    lines.append(f"token accuracy {m['accuracy']:.2f}%  ({m['sentences']} sentences, {m['tokens']} tokens)")
    if "accuracy_iob2" in m:
        lines.append(f"token accuracy after IOB2 normalisation of both files {m['accuracy_iob2']:.2f}%")
    if "calibration" in m:
        c = m["calibration"]
        t = {x["threshold"]: x for x in c["thresholds"]}
        how = ("logistic recalibration" if c.get("method") == "logistic"
               else f"temperature {c.get('temperature', 1.0):.2f}")
        lines.append(f"entity scores: ECE {c['ece']:.3f} ({how})"
                     + "".join(f"; score >= {k}: P {t[k]['precision']:.1f} R {t[k]['recall']:.1f}"
                               for k in SHOWN_THRESHOLDS if k in t))
    return "\n".join(lines)


def evaluate_model(ner, sentences: Sequence[Sentence], progress: bool = False, metrics_path: str | Path | None = None,
                   predictions_path: str | Path | None = None, data: str | None = None
                   ) -> tuple[dict, list[list[str]]]:
    """Predict `sentences` with an NERModel, score them against their tags, and optionally write the metrics JSON and
    a `token gold pred` file. `data`: the data's name, recorded in the metrics. Returns (metrics, predicted tags)."""
    unknown = set(entity_types(sentences)) - set(ner.labels.types)
    if unknown:
        log.warning("types %s are not in the model's labels %s: they count as missed", sorted(unknown),
                    list(ner.labels.types))
    scorer = Scorer(ner, sentences, progress)
    temperature = ner.temperature
    pred, confs = scorer.at(temperature, recalibrate=True)  # the scores a user gets
    gold = [s.tags for s in sentences]
    # the precision the model ran at (NERModel.precision: "auto" resolved), so a number says how it was measured
    metrics = {**({"data": data} if data else {}), "run_precision": getattr(ner, "precision", "fp32"),
               **compute_metrics(gold, pred)}
    method = "logistic" if ner.recalibration is not None else "temperature"
    metrics["calibration"] = {**calibration_metrics(scored_entities(gold, pred, confs), metrics["gold_entities"]),
                              "temperature": temperature, "method": method}
    if temperature != 1.0 or method == "logistic":  # the same entities as trained (T = 1): calibration's effect
        metrics["calibration_uncalibrated"] = calibration_metrics(scored_entities(gold, *scorer.at(1.0)),
                                                                  metrics["gold_entities"])
    if metrics_path is not None:
        atomic_write_text(Path(metrics_path), json.dumps(metrics, indent=2) + "\n")
    if predictions_path is not None:
        write_conll(Path(predictions_path), sentences, pred)
    return metrics, pred


def score_files(gold_path: str | Path, pred_path: str | Path) -> dict:
    """Score two CoNLL files (tag = last column; a `token gold pred` file given as gold gives its gold column, as
    pred its predictions). Sentences must align token by token; the first mismatch is an error naming the line. Tags
    are read as conlleval does (IOB1 and IOB2 both work)."""
    gold, pred = read_conll(gold_path, pairs="gold"), read_conll(pred_path, pairs="pred")
    if len(gold) != len(pred):
        raise DataError(f"{gold_path} has {len(gold)} sentences but {pred_path} has {len(pred)}")
    for g, p in zip(gold, pred, strict=True):
        if g.tokens != p.tokens:
            k = next((i for i, (a, b) in enumerate(zip(g.tokens, p.tokens, strict=False)) if a != b),
                     min(len(g), len(p)))
            gline = int(g.origin.rsplit(":", 1)[1]) + k
            pline = int(p.origin.rsplit(":", 1)[1]) + k
            gt = g.tokens[k] if k < len(g) else "<end of sentence>"
            pt = p.tokens[k] if k < len(p) else "<end of sentence>"
            raise DataError(f"token mismatch: {gold_path}:{gline} has {gt!r} but {pred_path}:{pline} has {pt!r}")
    # Entities with conlleval semantics: an I-X after O/other type starts a chunk -> normalise by reading IOB1. Strict
    # mode scores the predicted tags as given (IOB2): an I-X that starts a chunk is not an entity there.
    gold_iob2 = [to_iob2(s.tags, "iob1") for s in gold]
    m = compute_metrics(gold_iob2, [to_iob2(s.tags, "iob1") for s in pred])
    m["strict"] = compute_metrics(gold_iob2, [s.tags for s in pred])["strict"]
    # Token accuracy as conlleval counts it: on the tags as given (so B-X vs I-X differences count).
    m["accuracy_iob2"] = m["accuracy"]  # the same after IOB2 normalisation of both files
    m["accuracy"] = 100 * accuracy_score([s.tags for s in gold], [s.tags for s in pred])
    return m
