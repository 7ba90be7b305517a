"""Entity scores recalibrated by a logistic regression over what the score alone does not know.

One temperature rescales every score alike, but a model is right far more often on names it saw in training than on
new ones at the same score (issue 22's study: docs/results.md, "confidence off the training distribution"). The
logistic maps an entity's score as trained (T = 1) to the probability that it is right from four facts:

    logit(score)   seen (this surface form with this type in the training data)   log(length in words)   type

fitted on held-out data by evaluation/calibrate.py and saved in calibration.json ("logistic"); the engine applies it
to every entity it returns (`NERModel.merge`). Tags never change, only scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..data import spans


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def surface(text: str, offsets: Sequence[tuple[int, int]], a: int, b: int) -> str:
    """Words a..b of a text, single-spaced (how "seen" forms are compared)."""
    return " ".join(text[s:e] for s, e in offsets[a : b + 1])


@dataclass(frozen=True)
class Logistic:
    coef: tuple[float, ...]  # logit, seen, log length, then one per type of `types`
    intercept: float
    types: tuple[str, ...]
    seen: frozenset[tuple[str, str]]  # (surface form, type) pairs of the training data

    @staticmethod
    def features(score: float, seen: bool, length: int, typ: str, types: Sequence[str]) -> list[float]:
        return [logit(score), float(seen), math.log(length), *(float(typ == t) for t in types)]

    def score(self, score: float, form: str, typ: str, length: int) -> float:
        x = self.features(score, (form, typ) in self.seen, length, typ, self.types)
        z = self.intercept + sum(w * v for w, v in zip(self.coef, x, strict=True))
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def apply(self, texts: Sequence[str], offsets: Sequence[Sequence[tuple[int, int]]], tags: Sequence[list[str]],
              confs: Sequence[list[float]]) -> list[list[float]]:
        """Per text, the words' confidences with every entity's words carrying its recalibrated score."""
        out = []
        for text, off, tg, cf in zip(texts, offsets, tags, confs, strict=True):
            cf = list(cf)
            for typ, a, b in spans(tg):
                new = self.score(sum(cf[a : b + 1]) / (b - a + 1), surface(text, off, a, b), typ, b - a + 1)
                cf[a : b + 1] = [new] * (b - a + 1)
            out.append(cf)
        return out

    def to_dict(self) -> dict:
        return {"coef": list(self.coef), "intercept": self.intercept, "types": list(self.types),
                "seen": sorted([form, typ] for form, typ in self.seen)}

    @classmethod
    def from_dict(cls, d: dict) -> Logistic:
        return cls(tuple(d["coef"]), float(d["intercept"]), tuple(d["types"]),
                   frozenset((form, typ) for form, typ in d["seen"]))


def seen_forms(sentences: Iterable) -> frozenset[tuple[str, str]]:
    """(surface form, type) of every gold entity of labelled sentences."""
    return frozenset((" ".join(s.tokens[a : b + 1]), typ) for s in sentences for typ, a, b in spans(s.tags))
