"""spaCy pipeline component: `nlp.add_pipe("llm_ner", config={"model": "runs/quickstart/model"})`.

The factory is registered through the `spacy_factories` entry point (pyproject.toml), so spaCy finds it without an
import. The component makes the one predict call (`NERModel.__call__`) on `doc.text` — our own word splitting and
windowing, exactly as in evaluation — and maps each character span onto the Doc's tokens (outputs.OUTPUTS["spacy"]):

  doc.ents                     the entities (spans snapped to spaCy tokens, see `alignment_mode`)
  doc.spans["llm_ner"]         the same spans, with attrs["scores"] = one confidence per span
  doc.spans["llm_ner_review"]  entities scored below the thresholds (`min_score`, and the per-type thresholds saved
                               by `llm-ner calibrate --target-precision`), for a human to check; not in doc.ents

`displacy.render(doc, style="ent")` then works as for any spaCy NER.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from spacy.language import Language
from spacy.tokens import Doc

SPANS_KEY = "llm_ner"
REVIEW_KEY = "llm_ner_review"


class LLMNERComponent:
    def __init__(self, nlp: Language, name: str, model: str, batch_size: int = 16, device: str | None = None,
                 alignment_mode: str = "expand", overwrite_ents: bool = True, min_score: float | None = None,
                 precision: str = "auto"):
        from ..inference.engine import NERModel

        self.name = name
        self.model_dir = model
        # precision: quantize.PRECISIONS, the choices every entry point offers ("auto" by default)
        self.ner = NERModel.from_pretrained(model, device=device, batch_size=batch_size, precision=precision,
                                           min_score=min_score)
        self.batch_size = batch_size
        # "expand": a span that cuts a spaCy token grows to cover it; "strict" drops it; "contract" shrinks it.
        self.alignment_mode = alignment_mode
        self.overwrite_ents = overwrite_ents

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.ner.labels.types)

    def __call__(self, doc: Doc) -> Doc:
        return next(iter(self.pipe([doc])))

    def pipe(self, docs: Iterable[Doc], batch_size: int | None = None) -> Iterator[Doc]:
        it = iter(docs)
        while chunk := list(islice(it, batch_size or self.batch_size)):
            yield from self.ner([d.text for d in chunk]).to("spacy", docs=chunk, alignment_mode=self.alignment_mode,
                                                            overwrite_ents=self.overwrite_ents, spans_key=SPANS_KEY,
                                                            review_key=REVIEW_KEY)


@Language.factory("llm_ner", default_config={"model": None, "batch_size": 16, "device": None,
                                               "alignment_mode": "expand", "overwrite_ents": True, "min_score": None,
                                               "precision": "auto"})
def make_llm_ner(nlp: Language, name: str, model: str | None, batch_size: int, device: str | None, alignment_mode: str,
                 overwrite_ents: bool, min_score: float | None, precision: str) -> LLMNERComponent:
    if not model:
        raise ValueError('llm_ner needs a saved model dir: nlp.add_pipe("llm_ner", config={"model": "DIR"})')
    return LLMNERComponent(nlp, name, model, batch_size, device, alignment_mode, overwrite_ents, min_score, precision)
