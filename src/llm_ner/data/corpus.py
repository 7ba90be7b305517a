"""The corpus in memory: `Sentence` (tokens + IOB2 tags, where it came from), normalising a read corpus to IOB2,
label remapping (system A/B, renames), statistics and CoNLL writing. Reading files is readers.py's; the format
registry, detection and the entry points (load_corpus, load_split, read_texts) are formats.py's."""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..fsutil import atomic_write_text
from .schemes import SCHEMES, DataError, check_strict_iob2, detect_scheme, split_tag, to_iob2

log = logging.getLogger(__name__)


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    doc_id: str | None = None
    # Where it came from, for error messages and the failure analysis ("train.txt:1234").
    origin: str | None = None
    # Optional: the raw text and each token's (start, end) in it (span-annotated JSONL keeps the user's text).
    text: str | None = None
    offsets: list[tuple[int, int]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.tokens)



def normalise(sentences: list[Sentence], scheme: str = "auto", strict: bool = False, name: str = "data") -> str:
    """Convert all sentences to IOB2 in place; returns the scheme that was found/declared."""
    if scheme not in ("auto", *SCHEMES, "bio", "bilou"):
        raise DataError(f"{name}: unknown tag scheme {scheme!r}; use auto, iob1, iob2 (bio) or bioes (bilou)")
    scheme = {"bio": "iob2", "bilou": "bioes"}.get(scheme, scheme)
    if strict and scheme not in ("auto", "iob2"):  # strict means "valid IOB2 as written": it cannot hold for these
        raise DataError(f"{name}: strict mode checks IOB2, but the scheme is declared {scheme}; drop one of the two")
    if strict:  # whatever detection would say: with auto, `said O` / `York I-LOC` would be read as IOB1 silently
        for s in sentences:
            check_strict_iob2(s.tags, [f"{s.origin or name} token {i + 1}" for i in range(len(s))])
        scheme = "iob2"
    if scheme == "auto":
        scheme = detect_scheme(s.tags for s in sentences)
    for s in sentences:
        s.tags = to_iob2(s.tags, scheme)
    return scheme




# ---------------------------------------------------------------------------------------------------------------------
# label remapping and statistics


def remap(
    sentences: list[Sentence], keep: Sequence[str] | None = None, rename: dict[str, str | None] | None = None
) -> list[Sentence]:
    """Rename entity types (`rename`, a type mapped to None or "O" is dropped) and/or keep only the types in `keep`
    (every other type becomes O: MultiNERD "system B"). Returns new sentences, still valid IOB2."""
    rename = rename or {}
    out = []
    for s in sentences:
        tags = []
        for tag in s.tags:
            p, t = split_tag(tag)
            if t is not None:
                t = rename.get(t, t)
                if t in (None, "O") or (keep is not None and t not in keep):
                    p, t = "O", None
            tags.append("O" if t is None else f"{p}-{t}")
        out.append(Sentence(s.tokens, to_iob2(tags, "iob2"), s.doc_id, s.origin, s.text, s.offsets))
    return out


def entity_types(sentences: Iterable[Sentence]) -> list[str]:
    return sorted({t for s in sentences for tag in s.tags if (t := split_tag(tag)[1])})


def stats(sentences: Sequence[Sentence]) -> dict:
    ents = Counter(split_tag(t)[1] for s in sentences for t in s.tags if t.startswith("B-"))
    return {
        "sentences": len(sentences),
        "tokens": sum(len(s) for s in sentences),
        "entities": sum(ents.values()),
        "per_type": dict(sorted(ents.items())),
    }


def conll_text(sentences: Sequence[Sentence], pred_tags: Sequence[Sequence[str]] | None, gold: bool = True) -> str:
    """token gold [pred] per line (token pred with gold=False: the input had no tags), blank line between sentences."""
    buf = io.StringIO()
    for i, s in enumerate(sentences):
        for j, (tok, g) in enumerate(zip(s.tokens, s.tags, strict=True)):
            cols = [tok] + ([g] if gold else []) + ([pred_tags[i][j]] if pred_tags is not None else [])
            buf.write(" ".join(cols) + "\n")
        buf.write("\n")
    return buf.getvalue()


def write_conll(path: str | Path, sentences: Sequence[Sentence], pred_tags: Sequence[Sequence[str]] | None,
                gold: bool = True) -> None:
    """`conll_text`, written atomically."""
    atomic_write_text(Path(path), conll_text(sentences, pred_tags, gold))
