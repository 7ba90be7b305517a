"""What prediction gives back, in every shape a caller asks for: the one `Entity` type, entities <-> word tags, and
the output writers (`OUTPUTS`: JSON lines, CoNLL, Label Studio, doccano), the transformers-pipeline dicts and spaCy
spans. Every entry point (predict, batch-predict, serve, the spaCy component) shapes its output here."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ..data import Sentence, spans
from ..data.annotation import doccano_lines, json_line, label_studio_tasks
from ..data.corpus import conll_text
from ..errors import UserError


@dataclass
class Entity:
    start: int  # character offsets into the text, end exclusive
    end: int
    label: str
    text: str
    score: float  # the model's probability of exactly this entity (model.decode), after the model's temperature

    def to_dict(self) -> dict:
        return asdict(self)


def tags_to_entities(text: str, offsets: Sequence[tuple[int, int]], tags: Sequence[str], conf: Sequence[float]):
    """IOB2 word tags -> character spans (an I-X without a matching B-X starts an entity, as in conlleval)."""
    ents = []
    for label, a, b in spans(tags):
        s, e = offsets[a][0], offsets[b][1]
        # every word of an entity carries its score (model.decode); the mean only matters where overlapping windows
        # scored the entity's words differently
        ents.append(Entity(s, e, label, text[s:e], round(float(sum(conf[a : b + 1]) / (b - a + 1)), 4)))
    return ents


def entities_to_tags(offsets: Sequence[tuple[int, int]], entities: Sequence[Entity]) -> list[str]:
    """Entities back to IOB2 word tags (the words whose offsets they span): CoNLL output of thresholded entities."""
    first = {s: i for i, (s, _) in enumerate(offsets)}
    tags = ["O"] * len(offsets)
    for e in entities:
        i = first[e.start]
        tags[i] = f"B-{e.label}"
        while i + 1 < len(offsets) and offsets[i + 1][1] <= e.end:
            i += 1
            tags[i] = f"I-{e.label}"
    return tags


def entity_dicts(entities: Sequence[Entity]) -> list[dict]:
    return [e.to_dict() for e in entities]


def pipeline_dicts(entities: Sequence[Entity]) -> list[dict]:
    """transformers' `pipeline("token-classification", aggregation_strategy="simple")` shape."""
    return [{"entity_group": e.label, "score": e.score, "word": e.text, "start": e.start, "end": e.end}
            for e in entities]


@dataclass
class Predictions:
    """What one prediction call returns, before it is shaped: per text (entities at or above the thresholds,
    entities below them). Token input also keeps its sentences and their words' offsets (for CoNLL)."""
    texts: list[str]
    results: list[tuple[list[Entity], list[Entity]]]
    sentences: Sequence[Sentence] | None = None  # token input (CoNLL, a token per line)
    offsets: list[list[tuple[int, int]]] | None = None
    gold: bool = False  # the token input carried tags: CoNLL output keeps them beside the predictions
    # Per text, how sure the model is of its whole tagging (`NERModel.predict_texts_scored`: mean log-probability per
    # word, <= 0); writers then give each record `confidence` = exp(score), the per-word geometric mean probability.
    scores: list[float] | None = None

    def confidences(self) -> list[float | None]:
        return [round(math.exp(s), 4) for s in self.scores] if self.scores is not None else [None] * len(self.texts)

    def shown(self, review: bool) -> list[list[dict]]:
        """Per text, the entities a pre-annotation shows: the kept ones, with --review the ones below too."""
        return [sorted(entity_dicts(kept + low if review else kept), key=lambda e: e["start"])
                for kept, low in self.results]


@dataclass(frozen=True)
class Output:
    name: str
    summary: str
    write: Callable[[Predictions, bool, str], str]  # (predictions, review, model id "name@version") -> file text
    tokens_only: bool = False  # needs token input
    review: bool = True  # has a place for the entities below the thresholds


def _jsonl(p: Predictions, review: bool, _model: str) -> str:
    return "".join(json_line({"text": t, "entities": entity_dicts(kept),
                              **({"needs_review": entity_dicts(low)} if review else {}),
                              **({"confidence": c} if c is not None else {})}) + "\n"
                   for t, (kept, low), c in zip(p.texts, p.results, p.confidences(), strict=True))


def _conll(p: Predictions, _review: bool, _model: str) -> str:
    tags = [entities_to_tags(o, kept) for o, (kept, _) in zip(p.offsets, p.results, strict=True)]
    return conll_text(p.sentences, tags, gold=p.gold)


def _label_studio(p: Predictions, review: bool, model: str) -> str:
    return json.dumps(label_studio_tasks(p.texts, p.shown(review), model, p.confidences()), ensure_ascii=False,
                      indent=1) + "\n"


def _doccano(p: Predictions, review: bool, _model: str) -> str:
    return "".join(doccano_lines(p.texts, p.shown(review), p.confidences()))


OUTPUTS: dict[str, Output] = {o.name: o for o in [
    Output("jsonl", "JSON lines: text, entities (start, end, label, text, score), needs_review with --review", _jsonl),
    Output("conll", "token gold? pred per line (token input only)", _conll, tokens_only=True, review=False),
    Output("label-studio", "a Label Studio task list with pre-annotations (each region's score) to import and "
                           "correct; with --review the entities below the thresholds too", _label_studio),
    Output("doccano", "doccano JSONL ('label': [start, end, type]) to import and correct", _doccano),
]}


def check_output(to: str, tokens_in: bool, review: bool) -> Output:
    """The chosen output, or a one-line error naming what does not fit."""
    if to not in OUTPUTS:
        raise UserError(f"--to {to!r}: use one of {', '.join(OUTPUTS)}")
    out = OUTPUTS[to]
    if out.tokens_only and not tokens_in:
        raise UserError(f"--to {to} needs token input (a CoNLL file, or a token per line): raw text has no words to "
                        "tag")
    if review and not out.review:
        raise UserError(f"--review: {to} has no place for entities to review; use --to "
                        + ", ".join(n for n, o in OUTPUTS.items() if o.review))
    return out


def to_doc(doc, kept: Sequence[Entity], low: Sequence[Entity], alignment_mode: str, overwrite_ents: bool,
           spans_key: str, review_key: str):
    """Entities onto a spaCy Doc: `doc.ents`, `doc.spans[spans_key]` (with a "scores" attribute) and the entities
    below the thresholds in `doc.spans[review_key]`."""
    from spacy.tokens import SpanGroup
    from spacy.util import filter_spans

    review = [(sp, e.score) for e in low
              if (sp := doc.char_span(e.start, e.end, label=e.label, alignment_mode=alignment_mode))]
    doc.spans[review_key] = SpanGroup(doc, name=review_key, spans=[sp for sp, _ in review],
                                      attrs={"scores": [sc for _, sc in review]})
    found, scores = [], []
    for e in kept:
        span = doc.char_span(e.start, e.end, label=e.label, alignment_mode=alignment_mode)
        if span is not None:  # None: "strict" and the span cuts a token, or only whitespace
            found.append(span)
            scores.append(e.score)
    chosen = filter_spans(found)  # expansion can make neighbours overlap; keep the longest, as spaCy does
    # overwrite_ents False: keep entities set by earlier components, add ours where they do not clash
    doc.ents = chosen if overwrite_ents else filter_spans(list(doc.ents) + chosen)
    by_span = {(s.start, s.end, s.label_): sc for s, sc in zip(found, scores, strict=True)}
    doc.spans[spans_key] = SpanGroup(doc, name=spans_key, spans=chosen,
                                     attrs={"scores": [by_span[(s.start, s.end, s.label_)] for s in chosen]})
    return doc
