"""Tag schemes: IOB1, IOB2 (BIO), BIOES (BILOU) — detection, conversion to IOB2 (used everywhere inside llm-ner),
and entity spans. Like seqeval's `scheme` module, this knows about tags only, nothing about files or models."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..errors import UserError

SCHEMES = ("iob1", "iob2", "bioes")
_TAG_RE = re.compile(r"^(?:O|([BIESLU])-(.+))$")


class DataError(UserError, ValueError):
    """Bad input data. The message always names the file and the line (or record)."""




def split_tag(tag: str) -> tuple[str, str | None]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', None). Raises ValueError for anything else."""
    m = _TAG_RE.match(tag)
    if not m:
        raise ValueError(f"invalid tag {tag!r} (expected 'O' or a prefix B/I/E/S followed by '-TYPE')")
    if tag == "O":
        return "O", None
    prefix = {"L": "E", "U": "S"}.get(m.group(1), m.group(1))  # BILOU == BIOES
    return prefix, m.group(2)


def detect_scheme(tag_seqs: Iterable[Sequence[str]]) -> str:
    """IOB1 if an I-X ever starts an entity (after O or another type), BIOES if E-/S- appear, else IOB2."""
    iob1 = False
    for tags in tag_seqs:
        prev_p, prev_t = "O", None
        for tag in tags:
            p, t = split_tag(tag)
            if p in ("E", "S"):
                return "bioes"
            if p == "I" and (prev_p == "O" or prev_t != t):
                iob1 = True
            prev_p, prev_t = p, t
    return "iob1" if iob1 else "iob2"


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """Convert one sentence's tags from `scheme` to IOB2. An I-X that starts an entity becomes B-X (this is exactly
    how conlleval reads IOB1, and also repairs ill-formed IOB2)."""
    out: list[str] = []
    prev_p, prev_t = "O", None
    for tag in tags:
        p, t = split_tag(tag)
        if p == "O":
            out.append("O")
        elif p in ("B", "S"):
            out.append(f"B-{t}")
        else:  # I or E: continues the previous entity of the same type, else starts a new one
            out.append(f"I-{t}" if prev_p in ("B", "I") and prev_t == t else f"B-{t}")
        # After E/S the entity is closed, so a following I must start a new one.
        prev_p, prev_t = ("O", None) if p in ("E", "S", "O") else (p, t)
    return out


def spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """IOB2 (or IOB1, read like conlleval) -> entity spans (type, first, last), last inclusive."""
    out: list[tuple[str, int, int]] = []
    cur: list | None = None
    for i, tag in enumerate(list(tags) + ["O"]):
        p, t = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if p == "I" and cur is not None and cur[0] == t:
            cur[2] = i
            continue
        if cur is not None:
            out.append(tuple(cur))
        cur = [t, i, i] if p in ("B", "I") else None
    return out


def iob2_to_bioes(tags: Sequence[str]) -> list[str]:
    out = []
    for i, tag in enumerate(tags):
        p, t = split_tag(tag)
        nxt = tags[i + 1] if i + 1 < len(tags) else "O"
        continues = nxt == f"I-{t}"
        if p == "B":
            out.append(f"B-{t}" if continues else f"S-{t}")
        elif p == "I":
            out.append(f"I-{t}" if continues else f"E-{t}")
        else:
            out.append("O")
    return out


def check_strict_iob2(tags: Sequence[str], where: Sequence[str]) -> None:
    """Strict mode: an I-X must follow B-X or I-X. `where[i]` names token i's file:line."""
    prev = "O"
    for tag, loc in zip(tags, where, strict=True):
        p, t = split_tag(tag)
        if p == "I" and prev not in (f"B-{t}", f"I-{t}"):
            raise DataError(f"{loc}: tag {tag!r} follows {prev!r}, which IOB2 forbids (strict mode)")
        prev = tag


def is_tag(text: str) -> bool:
    """Whether `text` reads as a tag of any supported scheme ('O', 'B-PER', 'I-creative-work', 'S-LOC', ...)."""
    return _TAG_RE.match(text) is not None
