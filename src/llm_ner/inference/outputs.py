"""What prediction gives back, in every shape a caller asks for: the one `Entity` type, entities <-> word tags, and
the thresholds that split them into kept and for review, the one result type (`Predictions`), and the one registry of
output shapes (`OUTPUTS`): the files `predict --to` writes (JSON lines, CoNLL, Label Studio, doccano) and the in-memory
shapes (the service's and batch-predict's records, the transformers-pipeline dicts, Label Studio regions, spaCy Docs).
Every entry point shapes its output here: a test (test_layout) checks none builds an entity's shape elsewhere."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..data import Sentence, spans
from ..data.annotation import LS_FROM, LS_TO, doccano_lines, json_line, label_studio_prediction, label_studio_tasks
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


@dataclass(frozen=True)
class Thresholds:
    """When an entity is kept and when it goes for review: its score must reach both `floor` (--min-score, the
    service's or the spaCy component's min_score) and its type's threshold (calibrate --target-precision, saved in
    calibration.json). Checked once, here, where it is made — every caller builds one."""
    floor: float | None = None
    by_type: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        v = self.floor
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1):
            raise UserError(f"min_score {v!r}: an entity score is a probability, give a number between 0 and 1")
        # a type's threshold may be above 1: calibrate's "no threshold reaches the target" (all of it for review)
        for k, t in self.by_type:
            if isinstance(t, bool) or not isinstance(t, int | float) or t < 0:
                raise UserError(f"the threshold of {k} {t!r}: give a number >= 0 (calibration.json 'thresholds')")

    @classmethod
    def of(cls, floor: float | None = None, by_type: Mapping[str, float] | None = None) -> Thresholds:
        return cls(None if floor is None else floor, tuple(sorted((by_type or {}).items())))

    def at(self, label: str) -> float:
        return max(self.floor or 0.0, dict(self.by_type).get(label, 0.0))

    def split(self, entities: Sequence[Entity]) -> tuple[list[Entity], list[Entity]]:
        """(entities at or above the thresholds, those below them — for a human to review)."""
        return ([e for e in entities if e.score >= self.at(e.label)],
                [e for e in entities if e.score < self.at(e.label)])


@dataclass(kw_only=True)
class Predictions:
    """What the one predict call (`NERModel.__call__`) returns, before it is shaped: per text (entities at or above
    the thresholds, entities below them). `to(name)` shapes it through `OUTPUTS`, the one place every caller's output
    is made (HTTP response, batch record, pipeline dicts, spaCy Doc, Label Studio, CoNLL, JSON lines, doccano)."""
    texts: list[str]
    results: list[tuple[list[Entity], list[Entity]]]
    review: bool = False  # shapes that can show the entities below the thresholds show them
    tags: list[list[str]] | None = None  # per word, every entity (no thresholds): what evaluation scores
    sentences: Sequence[Sentence] | None = None  # token input (CoNLL, a token per line)
    offsets: list[list[tuple[int, int]]] | None = None
    gold: bool = False  # the token input carried tags: CoNLL output keeps them beside the predictions
    # Per text, how sure the model is of its whole tagging (`scored=True`: mean log-probability per word, <= 0);
    # the shapes then give each text `confidence` = exp(score), the per-word geometric mean probability.
    scores: list[float] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, part: slice | Sequence[int]) -> Predictions:
        """The predictions of some texts: a slice (the service's batcher hands each request its own) or a list of
        indices, in that order (select's choice)."""
        def cut(x):
            return None if x is None else x[part] if isinstance(part, slice) else [x[i] for i in part]
        return Predictions(texts=cut(self.texts), results=cut(self.results), review=self.review, tags=cut(self.tags),
                           sentences=cut(self.sentences), offsets=cut(self.offsets), gold=self.gold,
                           scores=cut(self.scores))

    @property
    def entities(self) -> list[list[Entity]]:
        """Per text, the entities at or above the thresholds."""
        return [kept for kept, _ in self.results]

    @property
    def needs_review(self) -> list[list[Entity]]:
        """Per text, the entities below the thresholds."""
        return [low for _, low in self.results]

    def confidences(self) -> list[float | None]:
        return [round(math.exp(s), 4) for s in self.scores] if self.scores is not None else [None] * len(self.texts)

    def shown(self) -> list[list[dict]]:
        """Per text, the entities a pre-annotation shows: the kept ones, with `review` the ones below too."""
        return [sorted(entity_dicts(kept + low if self.review else kept), key=lambda e: e["start"])
                for kept, low in self.results]

    def to(self, name: str, **options):
        """This prediction in the shape `name` (an `OUTPUTS` entry); a file shape gives its text."""
        if name not in OUTPUTS:
            raise ValueError(f"no output shape {name!r}: one of {', '.join(OUTPUTS)}")
        return OUTPUTS[name].write(self, **options)


@dataclass(frozen=True)
class Output:
    name: str
    summary: str
    write: Callable[..., Any]  # (predictions, **options) -> file text, or Python objects for in-memory shapes
    file: bool = True  # a `predict --to` choice (else an in-memory shape: the service, batch, pipeline, spaCy)
    tokens_only: bool = False  # needs token input
    review: bool = True  # has a place for the entities below the thresholds


def _records(p: Predictions) -> list[dict]:
    """Per text: entities (start, end, label, text, score), needs_review with `review`, confidence when scored."""
    return [{"entities": entity_dicts(kept), **({"needs_review": entity_dicts(low)} if p.review else {}),
             **({"confidence": c} if c is not None else {})}
            for (kept, low), c in zip(p.results, p.confidences(), strict=True)]


def _pipeline(p: Predictions) -> list[list[dict]]:
    """transformers' `pipeline("token-classification", aggregation_strategy="simple")` shape, per text."""
    return [[{"entity_group": e.label, "score": e.score, "word": e.text, "start": e.start, "end": e.end}
             for e in kept] for kept in p.entities]


def _label_studio_regions(p: Predictions, model: str, from_name: str = LS_FROM, to_name: str = LS_TO,
                          labels: Sequence[str] | None = None) -> list[dict]:
    """Per text, one Label Studio prediction (a region per entity; only `labels` where the project has fewer)."""
    return [label_studio_prediction([e for e in ents if labels is None or e["label"] in labels], model, c,
                                    from_name=from_name, to_name=to_name)
            for ents, c in zip(p.shown(), p.confidences(), strict=True)]


def _jsonl(p: Predictions, model: str = "") -> str:
    return "".join(json_line({"text": t, **r}) + "\n" for t, r in zip(p.texts, _records(p), strict=True))


def _conll(p: Predictions, model: str = "") -> str:
    tags = [entities_to_tags(o, kept) for o, kept in zip(p.offsets, p.entities, strict=True)]
    return conll_text(p.sentences, tags, gold=p.gold)


def _label_studio(p: Predictions, model: str = "") -> str:
    return json.dumps(label_studio_tasks(p.texts, p.shown(), model, p.confidences()), ensure_ascii=False,
                      indent=1) + "\n"


def _doccano(p: Predictions, model: str = "") -> str:
    return "".join(doccano_lines(p.texts, p.shown(), p.confidences()))


OUTPUTS: dict[str, Output] = {o.name: o for o in [
    Output("jsonl", "JSON lines: text, entities (start, end, label, text, score), needs_review with --review", _jsonl),
    Output("conll", "token gold? pred per line (token input only)", _conll, tokens_only=True, review=False),
    Output("label-studio", "a Label Studio task list with pre-annotations (each region's score) to import and "
                           "correct; with --review the entities below the thresholds too", _label_studio),
    Output("doccano", "doccano JSONL ('label': [start, end, type]) to import and correct", _doccano),
    Output("records", "per text: entities, needs_review with review, confidence when scored (the service's and "
                      "batch-predict's records)", _records, file=False),
    Output("pipeline", "transformers' token-classification pipeline dicts (entity_group, score, word, start, end)",
           _pipeline, file=False, review=False),
    Output("label-studio-regions", "per text, one Label Studio prediction (the ML backend's /predict)",
           _label_studio_regions, file=False),
    Output("spacy", "the entities on spaCy Docs: doc.ents, doc.spans (with scores), the ones to review apart",
           lambda p, **kw: to_docs(p, **kw), file=False),
]}
FILE_OUTPUTS = [n for n, o in OUTPUTS.items() if o.file]


def check_output(to: str, tokens_in: bool, review: bool) -> Output:
    """The chosen file output, or a one-line error naming what does not fit."""
    if to not in FILE_OUTPUTS:
        raise UserError(f"--to {to!r}: use one of {', '.join(FILE_OUTPUTS)}")
    out = OUTPUTS[to]
    if out.tokens_only and not tokens_in:
        raise UserError(f"--to {to} needs token input (a CoNLL file, or a token per line): raw text has no words to "
                        "tag")
    if review and not out.review:
        raise UserError(f"--review: {to} has no place for entities to review; use --to "
                        + ", ".join(n for n in FILE_OUTPUTS if OUTPUTS[n].review))
    return out


def to_docs(p: Predictions, docs: Sequence, alignment_mode: str = "expand", overwrite_ents: bool = True,
            spans_key: str = "llm_ner", review_key: str = "llm_ner_review") -> list:
    """Each text's entities onto its spaCy Doc (`to_doc`)."""
    return [to_doc(d, kept, low, alignment_mode, overwrite_ents, spans_key, review_key)
            for d, (kept, low) in zip(docs, p.results, strict=True)]


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
