"""The input formats: one registry entry per format (what reads its labelled sentences, what reads its texts for
prediction, whether it is recognised from content), the detection that tells them apart, and the entry points that
read any source — `load_corpus`, `load_split` (a run config's splits) and `read_texts` (prediction input).

Every list of formats — the config's `data.format`, the CLI's `--format`, batch prediction's inputs, the docs —
comes from FORMATS. Detection is one function rather than a detector per entry because formats are told apart
against each other (a line ending in "B-PER" is CoNLL only with evidence that rules out text): it needs evidence,
and refuses what is ambiguous with a message that says how to declare the format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig
from . import annotation as ann
from .corpus import Sentence, normalise, remap
from .readers import (
    BUNDLED,
    SPLIT_ALIASES,
    bundled_names,
    bundled_split,
    columns,
    open_lines,
    open_text,
    read_conll,
    read_docbin,
    read_doccano,
    read_hf,
    read_json,
    read_jsonl_records,
    read_jsonl_spans,
    read_jsonl_tokens,
    read_label_studio,
    read_multinerd,
    read_multinerd_hf,
    read_tokens,
)
from .schemes import DataError, is_tag

log = logging.getLogger(__name__)

Texts = tuple[str, list]  # ("text", [str]) | ("conll" | "tokens", [Sentence]): what `predict` reads from a file


def record_text(rec: dict, path: str | Path, lineno: int) -> str:
    """The 'text' of a JSON-lines record that prediction reads; an error names the line."""
    if not isinstance(rec.get("text"), str):
        raise DataError(f"{path}:{lineno}: expected a JSON object with a string 'text' field")
    return rec["text"]


def _jsonl_texts(path: Path) -> Texts:
    return "text", [record_text(rec, path, lineno) for lineno, rec in read_jsonl_records(path)]


def _sentence_texts(read: Callable[[Path], list[Sentence]]) -> Callable[[Path], Texts]:
    """A labelled token format's texts for prediction: its sentences (their tags are replaced)."""
    return lambda path: ("conll", read(path))


@dataclass(frozen=True)
class Format:
    name: str
    summary: str  # one line for --help and the docs
    read: Callable[[Path], list[Sentence]] | None  # labelled sentences (train / evaluate / stats); None: no labels
    texts: Callable[[Path], Texts] | None  # what `predict` and `batch-predict` read; None: not prediction input
    detected: bool = True  # recognised from content; False: only when declared (its content is not evidence enough)


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("conll", "token ... tag per line (tag in the last column), blank line between sentences",
           read_conll, _sentence_texts(read_conll)),
    Format("jsonl-tokens", 'JSON lines {"tokens": [...], "tags": [...]}', read_jsonl_tokens,
           _sentence_texts(read_jsonl_tokens)),
    Format("jsonl-spans", 'JSON lines {"text": ..., "entities": [{"start", "end", "label"}]}', read_jsonl_spans,
           _jsonl_texts),
    Format("doccano", 'doccano JSONL {"text", "label": [[start, end, label]]}', read_doccano, _jsonl_texts),
    Format("label-studio", "a Label Studio JSON export (a list of tasks)", read_label_studio,
           lambda path: ("text", [t for t, *_ in ann.label_studio_records(read_json(path), path, need_labels=False)])),
    Format("spacy", "a spaCy DocBin (.spacy)", read_docbin,
           lambda path: ("text", [text for text, *_ in ann.docbin_records(path)])),
    Format("multinerd", 'MultiNERD JSON lines {"tokens", "ner_tags": [int], "lang"} (declared only: integer tags '
                        "mean nothing without their label list)", read_multinerd, _sentence_texts(read_multinerd),
           detected=False),
    Format("jsonl-text", 'JSON lines {"text": ...} (no labels)', None, _jsonl_texts),
    Format("text", "a text per line (no labels)", None, lambda path: ("text", open_text(path))),
    Format("tokens", "a token per line, blank line between sentences (no tags)", None,
           lambda path: ("tokens", read_tokens(path))),
]}
ALIASES = {"jsonl": "jsonl-text"}  # --format jsonl: any JSON lines with a 'text'


def format_names(labelled: bool | None = None, texts: bool | None = None) -> list[str]:
    """The registry's names, filtered: labelled=True those with labels, texts=True those `predict` reads."""
    return [n for n, f in FORMATS.items() if (labelled is None or (f.read is not None) == labelled)
            and (texts is None or (f.texts is not None) == texts)]


def check_format(fmt: str, where: str = "data.format") -> str:
    """`fmt` is auto or a registry name (or alias): returns the name; else a one-line error listing them."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"{where}: unknown format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    return fmt


def _first_lines(path: Path, n: int = 200) -> tuple[list[tuple[int, str]], bool]:
    """The first n non-blank lines with their line numbers, and whether a blank line came between them — read
    without loading the whole file (batch prediction inputs can be huge)."""
    out: list[tuple[int, str]] = []
    blank = False
    try:
        with open_lines(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    blank = blank or bool(out)
                    continue
                out.append((lineno, line.rstrip("\r\n")))
                if len(out) == n:
                    break
    except UnicodeDecodeError:
        open_text(path)  # raises the DataError that names the line
    return out, blank


def _detect_json(path: Path, numbered: list[tuple[int, str]]) -> str:
    lines = [ln for _, ln in numbered]
    if lines[0].lstrip().startswith("["):  # one JSON document: a Label Studio export is a list of tasks
        tasks = read_json(path)
        if isinstance(tasks, list) and tasks and isinstance(tasks[0], dict) and "data" in tasks[0]:
            return "label-studio"
        raise DataError(f"{path}: a JSON list, but not a Label Studio export (a list of tasks with 'data'); "
                        "other JSON data goes one object per line (JSONL)")
    try:
        first = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{numbered[0][0]}: invalid JSON ({e.msg})") from None
    if not isinstance(first, dict):
        raise DataError(f"{path}:{numbered[0][0]}: expected a JSON object")
    if "text" in first:
        ents = first.get("entities")
        if "label" in first or (isinstance(ents, list) and ents and isinstance(ents[0], dict)
                                and "start_offset" in ents[0]):
            return "doccano"
        return "jsonl-spans" if "entities" in first or "spans" in first else "jsonl-text"
    tags = first.get("ner_tags", first.get("tags"))
    if isinstance(tags, list) and tags and all(isinstance(t, int) for t in tags):
        # integer tags mean nothing without the label list they index (MultiNERD's B-ANIM is WikiNEuRal's B-MISC)
        raise DataError(f"{path}:{numbered[0][0]}: integer tags need the label names they stand for: declare "
                        "--format multinerd (data.format: multinerd) for Babelscape/multinerd's order, or write the "
                        "tags as strings ('B-PER')")
    if "tokens" in first:
        return "jsonl-tokens"
    raise DataError(f"{path}:{numbered[0][0]}: a JSON record needs 'text' or 'tokens' (found keys {sorted(first)})")


def detect_format(path: str | Path, allow_text: bool = False) -> str:
    """A file's format from its content (never its name): 'conll' (token ... tag lines), 'jsonl-spans'
    ({"text", "entities"}), 'jsonl-tokens' ({"tokens", "tags"}), 'jsonl-text' ({"text"} only), 'doccano' ({"text",
    "label"}), 'label-studio' (a JSON list of tasks), 'spacy' (a DocBin) or, with allow_text, 'text' (a plain text
    per line) and 'tokens' (a token per line, blank lines between sentences, no tags). CoNLL needs evidence beyond
    tag-shaped last words ("the S-Bahn", "on I-95"): a line tagged O (or a -DOCSTART-), and for prediction input one
    column count. Ambiguous content is refused: the message says how to declare the format. ('multinerd' is never
    guessed: integer tags need their label list, so it must be declared.)"""
    path = Path(path)
    if ann.is_docbin(path):
        return "spacy"
    numbered, blank = _first_lines(path)
    if not numbered:
        raise DataError(f"{path}: empty file")
    lines = [ln for _, ln in numbered]
    if lines[0].lstrip().startswith(("[", "{")):
        return _detect_json(path, numbered)
    body = [ln for ln in lines if ln.split()[0] != "-DOCSTART-"]
    tabs = bool(body) and all("\t" in ln for ln in body)
    cols = [columns(ln, tabs) for ln in body]
    tagged = sum(len(c) >= 2 and is_tag(c[-1]) for c in cols)
    evidence = len(body) < len(lines) or any(len(c) >= 2 and c[-1] == "O" for c in cols)  # -DOCSTART- or an O
    # what makes text doubtful: evidence, or a bare `token TAG` line (a sentence rarely has two words, the last B-X)
    conll_like = evidence or any(len(c) == 2 and is_tag(c[-1]) for c in cols)
    if body and tagged == len(body) and evidence and (not allow_text or len({len(c) for c in cols}) == 1):
        return "conll"
    if allow_text:
        if body and all(len(c) == 1 for c in cols) and blank:
            return "tokens"
        if not conll_like:  # tag-shaped last words alone are no evidence: a text line may end in "S-Bahn" or "I-95"
            return "text"
    elif tagged and conll_like:
        return "conll"  # labelled data: the reader names the line that is not `token ... tag`
    if not tagged:
        raise DataError(f"{path}: neither CoNLL columns ('token ... tag') nor JSON lines; first line {lines[0]!r}")
    if not evidence and tagged == len(body):
        raise DataError(f"{path}: lines end in tag-shaped words but none is tagged O (e.g. {lines[0]!r}): if this is "
                        "a CoNLL file, declare it with --format conll (data.format: conll)")
    if tagged == len(body):
        widths = sorted({len(c) for c in cols})
        raise DataError(f"{path}: lines end in tags but have {widths} columns: CoNLL or text? declare it with --format "
                        "conll or text")
    bad = next(ln for ln, c in zip(body, cols, strict=True) if not (len(c) >= 2 and is_tag(c[-1])))
    raise DataError(f"{path}: ambiguous format: {tagged} of the first {len(body)} lines look like CoNLL "
                    f"'token ... tag' columns, but not e.g. {bad!r}; declare it with --format text, jsonl or conll")


def read_texts(path: str | Path, fmt: str = "auto") -> Texts:
    """Prediction input: ('text', [texts]) from a text-per-line or {"text"} JSONL file (or any format with texts),
    ('conll', sentences) from a labelled token format (tags replaced by the predictions), or ('tokens', sentences)
    from a token-per-line file without tags. `fmt`: auto or a name from FORMATS."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = check_format(fmt, "--format")
    if fmt == "auto":
        fmt = detect_format(path, allow_text=True)
    if FORMATS[fmt].texts is None:
        raise DataError(f"{path}: format {fmt!r} has no texts to predict; use one of "
                        f"{', '.join(format_names(texts=True))}")
    return FORMATS[fmt].texts(path)


def _read_file(path: Path, fmt: str) -> list[Sentence]:
    if not path.is_file():
        raise DataError(f"{path}: no such file (bundled corpora: {', '.join(bundled_names())})")
    if fmt == "auto":  # (load_corpus checked fmt)
        fmt = detect_format(path)
    if FORMATS[fmt].read is None:
        raise DataError(f"{path}: {fmt}: no labels to train or score on (labelled formats: "
                        f"{', '.join(format_names(labelled=True))})")
    return FORMATS[fmt].read(path)


def load_corpus(
    source: str | Path,
    fmt: str = "auto",
    scheme: str = "auto",
    strict: bool = False,
    limit: int | None = None,
) -> list[Sentence]:
    """Read any supported source and normalise it to IOB2. `limit` keeps the first N sentences (a deterministic
    subset, so runs are comparable)."""
    src = str(source)
    fmt = check_format(fmt)  # a typo in data.format / --format is an error even where the source needs none
    if src.startswith("hf:"):
        _, name, split = src.split(":", 2)
        sents = read_hf(name, split)
    elif src.startswith("multinerd:") and not Path(src).exists():
        sents = read_multinerd_hf(SPLIT_ALIASES.get(src.split(":", 1)[1], src.split(":", 1)[1]).replace(
            "valid", "validation"))
    elif ":" in src and src.split(":", 1)[0] in BUNDLED and not Path(src).exists():
        sents = bundled_split(*src.split(":", 1))
    else:
        sents = _read_file(Path(src), fmt)
    if limit is not None:
        sents = sents[:limit]
    found = normalise(sents, scheme, strict, src)
    n_ent = sum(t.startswith("B-") for s in sents for t in s.tags)
    log.info("read %s: %d sentences, %d tokens, %d entities (scheme %s -> iob2)", src, len(sents),
             sum(len(s) for s in sents), n_ent, found)
    return sents


def load_split(cfg: RunConfig, which: str) -> list[Sentence] | None:
    """The run config's train / dev / test split, read, limited and remapped as its data section says."""
    d = cfg.data
    src = getattr(d, which)
    if src is None:
        return None
    limit = {"train": d.max_train_sentences, "dev": d.max_dev_sentences, "test": d.max_test_sentences}[which]
    sents = load_corpus(src, d.format, d.scheme, d.strict, limit)
    if d.keep_types is not None or d.rename:
        sents = remap(sents, d.keep_types, d.rename)
    return sents


