"""Data: tag schemes (schemes.py), annotation-tool layouts (annotation.py), the corpus in memory (corpus.py), its
readers (readers.py) and the format registry with detection and the entry points (formats.py). The names below are
the public API, re-exported so that `from llm_ner.data import load_corpus` keeps working."""

from .corpus import Sentence, entity_types, normalise, remap, stats, write_conll
from .formats import FORMATS, check_format, detect_format, format_names, load_corpus, load_split, read_texts
from .readers import (
    BUNDLED,
    MULTINERD_TAGS,
    MULTINERD_TYPES,
    bundled_names,
    read_conll,
    read_jsonl_spans,
    read_jsonl_tokens,
    read_multinerd,
    read_predictions,
    spans_to_sentence,
)
from .schemes import DataError, detect_scheme, iob2_to_bioes, is_tag, spans, split_tag, to_iob2

__all__ = [
    "BUNDLED", "FORMATS", "MULTINERD_TAGS", "MULTINERD_TYPES", "DataError", "Sentence", "bundled_names",
    "check_format", "detect_format", "format_names", "detect_scheme", "entity_types", "iob2_to_bioes", "is_tag",
    "load_corpus", "load_split",
    "normalise", "read_conll", "read_jsonl_spans", "read_jsonl_tokens", "read_multinerd", "read_predictions",
    "read_texts", "remap", "spans", "spans_to_sentence", "split_tag", "stats", "to_iob2", "write_conll",
]
