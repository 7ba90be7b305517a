"""Failure analysis from gold + predicted IOB2 tags: what kind of errors, for which types, where.

Error taxonomy (each gold and each predicted entity gets exactly one category, conlleval-style exact spans):
  correct            same span, same type
  wrong_type         same span, other type
  boundary_short     same type, the prediction lies inside the gold span (too short)
  boundary_long      same type, the prediction contains the gold span (too long)
  boundary_shift     same type, overlapping but neither contains the other
  type_and_boundary  overlapping, other type and other span
  missed             gold entity with no overlapping prediction
  spurious           predicted entity with no overlapping gold entity
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from ..data import Sentence, spans

Span = tuple[str, int, int]  # (type, first token, last token) inclusive


def classify(gold: Sequence[Span], pred: Sequence[Span]) -> tuple[list[tuple[Span, str, Span | None]], list[Span]]:
    """For each gold span: (span, category, the prediction it was matched with). Also the spurious predictions."""
    used: set[int] = set()
    result = []
    for g in gold:
        gt, gs, ge = g
        best, best_k = None, None
        for k, p in enumerate(pred):
            pt, ps, pe = p
            if ps <= ge and gs <= pe:  # overlap
                score = (p[1:] == g[1:], pt == gt, min(ge, pe) - max(gs, ps))
                if best is None or score > best:
                    best, best_k = score, k
        if best_k is None:
            result.append((g, "missed", None))
            continue
        p = pred[best_k]
        used.add(best_k)
        pt, ps, pe = p
        if (ps, pe) == (gs, ge):
            cat = "correct" if pt == gt else "wrong_type"
        elif pt != gt:
            cat = "type_and_boundary"
        elif gs <= ps and pe <= ge:
            cat = "boundary_short"
        elif ps <= gs and ge <= pe:
            cat = "boundary_long"
        else:
            cat = "boundary_shift"
        result.append((g, cat, p))
    spurious = [p for k, p in enumerate(pred) if k not in used and not any(
        p[1] <= g[2] and g[1] <= p[2] for g in gold)]
    return result, spurious


def _bucket(n: int, edges: Sequence[int]) -> str:
    for lo, hi in zip(edges, edges[1:], strict=False):
        if lo <= n < hi:
            return f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo)
    return f"{edges[-1]}+"


def _prf(c: Counter) -> dict:
    p = c["tp"] / c["pred"] if c["pred"] else 0.0
    r = c["tp"] / c["gold"] if c["gold"] else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(100 * p, 2), "recall": round(100 * r, 2), "f1": round(100 * f, 2),
            "gold": c["gold"], "pred": c["pred"]}


class _Tally:
    """What `analyze` counts, one sentence at a time. `seen`: the (surface form, type) pairs of training (None: no
    seen/unseen split)."""

    def __init__(self, seen: set | None):
        self.seen = seen
        self.taxonomy: dict[str, Counter] = defaultdict(Counter)
        self.confusion: dict[str, Counter] = defaultdict(Counter)  # gold type (or O) -> predicted type (or O)
        self.confused_forms: Counter = Counter()
        self.by_len: dict[str, Counter] = defaultdict(Counter)
        self.by_sent_len: dict[str, Counter] = defaultdict(Counter)
        self.by_seen: dict[str, Counter] = defaultdict(Counter)
        self.sentence_errors: list[tuple[int, int]] = []

    def add(self, i: int, s: Sentence, pt: Sequence[str]) -> None:
        g_sp, p_sp = spans(s.tags), spans(pt)
        matched, spurious = classify(g_sp, p_sp)
        sb = _bucket(len(s), [1, 10, 20, 30, 40])
        n_err = self._gold(s, matched, set(p_sp), sb) + self._spurious(s, spurious)
        for p in p_sp:
            self.by_len[_bucket(p[2] - p[1] + 1, [1, 2, 3, 4])].update(pred=1)
            self.by_sent_len[sb].update(pred=1)
            if self.seen is not None:
                surface = " ".join(s.tokens[p[1] : p[2] + 1])
                self.by_seen["seen" if (surface, p[0]) in self.seen else "unseen"].update(pred=1)
        if n_err:
            self.sentence_errors.append((n_err, i))

    def _gold(self, s: Sentence, matched, p_set: set, sb: str) -> int:
        """Counts each gold entity's outcome; returns how many were errors."""
        n_err = 0
        for g, cat, p in matched:
            self.taxonomy[g[0]][cat] += 1
            self.confusion[g[0]][p[0] if p is not None else "O"] += 1
            surface = " ".join(s.tokens[g[1] : g[2] + 1])
            if cat != "correct":
                n_err += 1
                # the predicted span's own words, where they differ: a boundary error shows what was tagged instead
                said = " ".join(s.tokens[p[1] : p[2] + 1]) if p is not None and p[1:] != g[1:] else ""
                self.confused_forms[(surface, g[0], p[0] if p else "O", said)] += 1
            tp = int(g in p_set)
            self.by_len[_bucket(g[2] - g[1] + 1, [1, 2, 3, 4])].update(gold=1, tp=tp)
            self.by_sent_len[sb].update(gold=1, tp=tp)
            if self.seen is not None:
                self.by_seen["seen" if (surface, g[0]) in self.seen else "unseen"].update(gold=1, tp=tp)
        return n_err

    def _spurious(self, s: Sentence, spurious) -> int:
        for p in spurious:
            self.taxonomy[p[0]]["spurious"] += 1
            self.confusion["O"][p[0]] += 1
            self.confused_forms[(" ".join(s.tokens[p[1] : p[2] + 1]), "O", p[0], "")] += 1
        return len(spurious)


def analyze(sentences: Sequence[Sentence], pred_tags: Sequence[Sequence[str]],
            train: Sequence[Sentence] | None = None, worst: int = 10) -> dict:
    """Everything the report shows about errors. `train` enables the seen/unseen split (entity surface form seen
    with the same type in training)."""
    seen = None if train is None else {(" ".join(s.tokens[a : b + 1]), t) for s in train for t, a, b in spans(s.tags)}
    t = _Tally(seen)
    for i, (s, pt) in enumerate(zip(sentences, pred_tags, strict=True)):
        t.add(i, s, pt)
    t.sentence_errors.sort(key=lambda x: (-x[0], x[1]))
    worst_list = [{"index": i, "errors": n, "origin": sentences[i].origin, "tokens": sentences[i].tokens,
                   "gold": sentences[i].tags, "pred": list(pred_tags[i])} for n, i in t.sentence_errors[:worst]]
    totals = Counter()
    for c in t.taxonomy.values():
        totals.update(c)
    return {
        "taxonomy": {k: dict(c) for k, c in sorted(t.taxonomy.items())},
        "taxonomy_total": dict(totals),
        "confusion": {g: dict(c) for g, c in sorted(t.confusion.items())},
        "confused_forms": [{"text": k[0], "gold": k[1], "pred": k[2], "pred_text": k[3], "count": v}
                           for k, v in t.confused_forms.most_common(25)],
        "by_entity_length": {k: _prf(v) for k, v in sorted(t.by_len.items())},
        "by_sentence_length": {k: _prf(v) for k, v in sorted(t.by_sent_len.items(), key=lambda kv: int(
            kv[0].split("-")[0].rstrip("+")))},
        "seen_unseen": {k: _prf(v) for k, v in sorted(t.by_seen.items())} if train is not None else None,
        "worst_sentences": worst_list,
    }


def summary_lines(a: dict, forms: int = 8) -> list[str]:
    """The analysis in a few lines for a terminal."""
    lines = ["errors by category: " + ", ".join(f"{k} {v}" for k, v in a["taxonomy_total"].items())]
    lines += [f"  {t:<10} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for t, c in a["taxonomy"].items()]
    lines.append("most confused: " + "; ".join(
        f"{f['text']!r} {f['gold']}->{f['pred']}" + (f" {f['pred_text']!r}" if f.get("pred_text") else "")
        + f" x{f['count']}" for f in a["confused_forms"][:forms]))
    if a["seen_unseen"]:
        lines.append("seen/unseen F1: " + ", ".join(f"{k} {v['f1']}" for k, v in a["seen_unseen"].items()))
    return lines
