"""Prediction over files, as `llm-ner predict` runs it: any input format `read_texts` knows (raw text, JSONL, CoNLL
tokens), the output checked before the model loads, predictions in any file output (outputs.OUTPUTS), written
atomically. Token input gets the same thresholds and outputs as raw text: entities per sentence, then the shape."""

from __future__ import annotations

from pathlib import Path

from ..data import DataError, read_texts
from ..fsutil import atomic_write_text, refuse_overwrite
from ..rundir import model_identity, model_tag
from .engine import NERModel
from .outputs import check_output


def predict_file(model: str, texts: list[str] | None = None, input: str | None = None, fmt: str = "auto",
                 output: str | None = None, to: str | None = None, review: bool = False, **load) -> tuple[str, str]:
    """(the predictions in the chosen shape, the file written or "" for none). `to`: jsonl for text, conll for
    token input when not given; a CoNLL output goes beside its input unless `output` says where. `load`: what
    NERModel.from_pretrained takes (batch_size, precision, min_score, ...)."""
    if not texts and not input:
        raise DataError("give --text or --input")
    if output and not input:
        raise DataError("--output needs --input (--text prints its spans)")
    kind, items = read_texts(input, fmt) if input else ("text", list(texts))
    tokens_in = kind in ("conll", "tokens")
    to = to or ("conll" if tokens_in else "jsonl")
    out = check_output(to, tokens_in, review)
    if to == "conll" and not output and input:
        output = str(Path(input).with_suffix(".pred.conll"))
    refuse_overwrite({"--output": output}, {"--input": input})
    ner = NERModel.from_pretrained(model, **load)
    preds = ner(items, review=review, gold=kind == "conll", progress=tokens_in or bool(input))
    body = preds.to(out.name, model=model_tag(model_identity(model)))
    if output:
        atomic_write_text(Path(output), body)
    return body, output or ""
