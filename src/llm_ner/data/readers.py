"""The readers: one function a format -> list[Sentence], each raising `DataError` with `file:line` (or
`file:record`) on bad input instead of silently dropping it. The format registry (formats.py) names them.

Formats:
  * CoNLL columns: token ... tag (any number of columns, tag last, space or tab separated, `-DOCSTART-` lines)
  * two-column `token<TAB>tag` (a special case of the above; a token may then contain spaces)
  * JSONL tokens: {"tokens": [...], "tags": [...]}           (also "ner_tags" as strings)
  * JSONL spans:  {"text": "...", "entities": [{"start": 0, "end": 5, "label": "PER"}, ...]}
  * annotation tools (annotation.py): a Label Studio JSON export, doccano JSONL ({"text", "label": [[s, e, L]]}),
    a spaCy DocBin (.spacy, what Prodigy's data-to-spacy writes)
  * bundled corpora by name: "conll2003:train", "wnut17:test"; Hugging Face datasets as "hf:NAME:SPLIT" (online only)
  * MultiNERD (its Hugging Face layout, integer tags)
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from . import annotation as ann
from .corpus import Sentence
from .schemes import DataError, is_tag, split_tag, to_iob2
from .words import split_words

log = logging.getLogger(__name__)

_NEWLINE = re.compile(r"\r\n|\r|\n")

BUNDLED = {"conll2003": ("train", "valid", "test"), "wnut17": ("train", "valid", "test"),
           "cleanconll": ("valid", "test")}  # CleanCoNLL relabels CoNLL-2003 dev/test; train on conll2003:train
SPLIT_ALIASES = {"dev": "valid", "validation": "valid", "testa": "valid", "testb": "test"}


def open_lines(path: str | Path):
    """A (possibly gzipped, by its .gz suffix) UTF-8 file opened as text lines, a BOM dropped: for reading a huge
    file as a stream (format detection, batch-predict's check) rather than whole."""
    path = Path(path)
    return (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8-sig")


def open_text(path: Path) -> list[str]:
    """Read a (possibly gzipped) UTF-8 file; a decoding error names the line."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
    # \n, \r\n and \r only: str.splitlines also breaks at U+2028, U+0085, form feeds…, which are characters inside a
    # line of text (predict wrote more records than the input had lines)
    lines = _NEWLINE.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# syntactic chunk types (CoNLL-2000 / the chunk column of CoNLL-2003): a last column of these is not entity tags
CHUNK_TYPES = {"NP", "VP", "PP", "ADJP", "ADVP", "SBAR", "PRT", "CONJP", "INTJ", "LST", "UCP"}


def columns(line: str, tabs: bool) -> list[str]:
    return [c.strip() for c in line.split("\t")] if tabs else line.split()


def tab_separated(path: Path, lines: list[str]) -> bool:
    """Are the columns split at tabs (every line has one) or at any whitespace (none has one)? Decided for the whole
    file: a mix is an error naming the first line that breaks it."""
    # a document marker is a marker whatever separates its columns (`-DOCSTART- -X- -X- O` in a tab-separated file)
    content = [(n, ln) for n, ln in enumerate(lines, 1) if ln.strip() and ln.split()[0] != "-DOCSTART-"]
    with_tab = [n for n, ln in content if "\t" in ln]
    tabs = bool(content) and len(with_tab) == len(content)
    if with_tab and not tabs:  # split at whitespace, "New York<TAB>B-LOC" would silently become token "New"
        n = next(n for n, ln in content if "\t" not in ln)
        raise DataError(f"{path}:{n}: this line separates columns by spaces, the file by tabs (line {with_tab[0]}); "
                        "use one separator throughout")
    return tabs


def conll_row(path: Path, lineno: int, line: str, tabs: bool, tag_col: int) -> list[str]:
    """One token line's columns, checked: enough of them, a token, a well-formed tag in column `tag_col`."""
    cols = columns(line, tabs)
    if len(cols) < 1 - tag_col or not cols[tag_col]:
        want = "'token ... tag' (tag in the last column)" if tag_col == -1 else f"at least {1 - tag_col} columns"
        raise DataError(f"{path}:{lineno}: expected {want}, got {line!r}")
    if not cols[0]:  # "\tB-PER": a tag with no token
        raise DataError(f"{path}:{lineno}: the token (first column) is empty in {line!r}")
    try:
        split_tag(cols[tag_col])
    except ValueError as e:
        raise DataError(f"{path}:{lineno}: {e}") from None
    return cols


def read_conll(path: str | Path, tag_col: int = -1, pairs: str = "refuse") -> list[Sentence]:
    """CoNLL-style column file: one token per line, tag in the last column (or column `tag_col`, counted from the
    end, e.g. -2 for the gold column of a `token gold pred` file), blank line between sentences. Columns are split at
    tabs if every line has one (a token may then hold spaces), else at any whitespace — decided for the whole file,
    not per line. With the default last column, a file whose last column holds chunk tags (B-NP…) is refused, and so
    is one whose last two columns are both entity tags (`token gold pred`) unless `pairs` says which
    to read: "gold" (the second-to-last column) or "pred" (the last)."""
    path = Path(path)
    lines = open_text(path)
    tabs = tab_separated(path, lines)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    last_two: list[set] = [set(), set()]  # the types in the last two columns, while both hold tags
    two_tag_columns = True
    doc, start = 0, 0

    def flush() -> None:
        if tokens:
            sentences.append(Sentence(list(tokens), list(tags), f"{path.name}#doc{doc}", f"{path}:{start}"))
            tokens.clear()
            tags.clear()

    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            flush()
            continue
        if line.split()[0] == "-DOCSTART-":
            flush()
            doc += 1
            continue
        cols = conll_row(path, lineno, line, tabs, tag_col)
        if two_tag_columns:
            if len(cols) >= 3 and is_tag(cols[-2]):
                for k in (0, 1):
                    last_two[k].add(split_tag(cols[k - 2])[1])
            else:
                two_tag_columns = False
        if not tokens:
            start = lineno
        tokens.append(cols[0])
        tags.append(cols[tag_col])
    flush()
    if not sentences:
        raise DataError(f"{path}: no sentences found (empty file?)")
    if tag_col == -1:
        def chunks(types: set) -> bool:
            return bool(types - {None}) and types - {None} <= CHUNK_TYPES

        # two entity-tag columns at the end (neither one a chunk column, as in CoNLL-2003's `... chunk NER`)
        pair = two_tag_columns and not chunks(last_two[0]) and not chunks(last_two[1])
        if pair and pairs == "gold":
            return read_conll(path, tag_col=-2)
        _check_tag_column(path, {t for s in sentences for tag in s.tags if (t := split_tag(tag)[1])},
                          pair and pairs == "refuse")
    return sentences


def _check_tag_column(path: Path, types: set[str], gold_and_pred: bool) -> None:
    if types and types <= CHUNK_TYPES:
        raise DataError(f"{path}: the last column holds syntactic chunk tags ({', '.join(sorted(types))}), not entity "
                        "types; put the entity tags in the last column")
    if gold_and_pred:
        raise DataError(f"{path}: the last two columns are both entity tags (a 'token gold pred' "
                        "file?); training and evaluation read one tag column: keep only the gold tags, or score the "
                        "file with `llm-ner score`")


def read_predictions(path: str | Path) -> tuple[list[Sentence], list[list[str]]]:
    """A `token gold pred` file (what `write_conll` writes): gold = second-to-last column, pred = last; both read as
    conlleval does (IOB1 or IOB2)."""
    gold, pred = read_conll(path, tag_col=-2), read_conll(path, pairs="pred")
    for s in gold:
        s.tags = to_iob2(s.tags, "iob1")
    return gold, [to_iob2(p.tags, "iob1") for p in pred]


def iter_jsonl(lines: Iterable[str], path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line; an error names the line. Lazy, so a huge file can be checked
    as a stream (batch-predict)."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        yield lineno, rec


def read_jsonl_records(path: Path) -> list[tuple[int, dict]]:
    records = list(iter_jsonl(open_text(path), path))
    if not records:
        raise DataError(f"{path}: no records found (empty file?)")
    return records


def read_jsonl_tokens(path: str | Path) -> list[Sentence]:
    """JSONL with {"tokens": [...], "tags": [...]} per line (the key "ner_tags" is accepted for "tags")."""
    path = Path(path)
    out = []
    for lineno, rec in read_jsonl_records(path):
        tokens = rec.get("tokens")
        tags = rec.get("tags", rec.get("ner_tags"))
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataError(f"{path}:{lineno}: record needs lists 'tokens' and 'tags'")
        if len(tokens) != len(tags):
            raise DataError(f"{path}:{lineno}: {len(tokens)} tokens but {len(tags)} tags")
        for i, (tok, tag) in enumerate(zip(tokens, tags, strict=True)):
            if not isinstance(tok, str) or not tok or any(c.isspace() for c in tok):
                raise DataError(f"{path}:{lineno}: token {i} {tok!r} must be a non-empty string without spaces")
            try:
                split_tag(tag)
            except (ValueError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: tags[{i}]: {e}") from None
        if not tokens:
            raise DataError(f"{path}:{lineno}: empty 'tokens' list")
        out.append(Sentence(tokens, list(tags), rec.get("doc_id"), f"{path}:{lineno}"))
    return out


def spans_to_sentence(text: str, entities: list[dict], where: str) -> tuple[Sentence, list[dict]]:
    """Character spans -> tokens + IOB2 tags. Returns the sentence and a report of how each span was tokenised.

    Errors (with `where`): offsets outside the text, overlapping spans, a span that cuts a word in two."""
    words = split_words(text)
    tags = ["O"] * len(words)
    starts = {s: i for i, (s, _) in enumerate(words)}
    ends = {e: i for i, (_, e) in enumerate(words)}
    report = []
    taken: list[tuple[int, int, str]] = []
    checked = []
    for k, ent in enumerate(entities):
        if not isinstance(ent, dict) or not {"start", "end", "label"} <= set(ent):
            raise DataError(f"{where}: entity {k} needs integer 'start', 'end' and a 'label': {ent!r}")
        checked.append((ann.offset(ent["start"], where), ann.offset(ent["end"], where), str(ent["label"])))
    for s, e, label in sorted(checked, key=lambda x: (x[0], x[1])):
        if not (0 <= s < e <= len(text)):
            raise DataError(f"{where}: entity {label} [{s},{e}) lies outside the text (length {len(text)})")
        for ps, pe, pl in taken:
            if s < pe and ps < e:
                raise DataError(f"{where}: entity {label} [{s},{e}) overlaps entity {pl} [{ps},{pe})")
        taken.append((s, e, label))
        # Trim whitespace the annotator included, then the span must start and end on word boundaries.
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s not in starts or e not in ends:
            inside = [text[a:b] for a, b in words if a < e and s < b]
            raise DataError(
                f"{where}: entity {label} [{s},{e}) {text[s:e]!r} cuts a word (words there: {inside}); "
                "move the offsets to word boundaries"
            )
        i, j = starts[s], ends[e]
        tags[i] = f"B-{label}"
        for t in range(i + 1, j + 1):
            tags[t] = f"I-{label}"
        report.append({"label": label, "text": text[s:e], "tokens": [text[a:b] for a, b in words[i : j + 1]]})
    sent = Sentence([text[a:b] for a, b in words], tags, None, where, text=text, offsets=words)
    return sent, report


def read_jsonl_spans(path: str | Path, report: list | None = None) -> list[Sentence]:
    """JSONL with {"text": ..., "entities": [{"start", "end", "label"}], "doc_id": optional}: char spans -> words ->
    IOB2."""
    path = Path(path)
    out = []
    empty = 0
    for lineno, rec in read_jsonl_records(path):
        text = rec.get("text")
        ents = rec.get("entities", rec.get("spans"))
        where = f"{path}:{lineno} (record {len(out) + empty + 1})"
        if not isinstance(text, str) or not isinstance(ents, list):  # a missing or misspelt key is not "no entities"
            raise DataError(f"{where}: record needs a string 'text' and a list 'entities' ([] for a text with no "
                            f"entities); found keys {sorted(rec)}")
        sent, rep = spans_to_sentence(text, ents, where)
        sent.doc_id = rec.get("doc_id")  # data.context: document joins consecutive records of one doc_id
        if report is not None:
            report.append({"record": where, "spans": rep})
        if sent.tokens:
            out.append(sent)
        else:
            empty += 1
    if empty:
        log.warning("%s: %d records have no words (empty text) and carry no labels; skipped", path, empty)
    if not out:
        raise DataError(f"{path}: no record has any words")
    return out


def _records_to_sentences(records: list[ann.Record], path: Path) -> list[Sentence]:
    out = []
    for text, ents, where, doc_id in records:
        sent, _ = spans_to_sentence(text, ents, where)
        sent.doc_id = doc_id
        if sent.tokens:
            out.append(sent)
    if not out:
        raise DataError(f"{path}: no record has any words")
    return out


def read_json(path: Path) -> object:
    try:
        return json.loads("\n".join(open_text(path)))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def read_label_studio(path: str | Path) -> list[Sentence]:
    path = Path(path)
    return _records_to_sentences(ann.label_studio_records(read_json(path), path), path)


def read_doccano(path: str | Path) -> list[Sentence]:
    path = Path(path)
    return _records_to_sentences(ann.doccano_records(read_jsonl_records(path), path), path)


def read_docbin(path: str | Path) -> list[Sentence]:
    path = Path(path)
    return _records_to_sentences(ann.docbin_records(path), path)


def read_hf(name: str, split: str, tags_field: str = "ner_tags") -> list[Sentence]:  # pragma: no cover - online only
    """A Hugging Face dataset by name (needs internet and `pip install datasets`)."""
    try:
        import datasets
    except ImportError:
        raise DataError("reading 'hf:...' needs `pip install datasets` (and internet access)") from None
    ds = datasets.load_dataset(name, split=split)
    feat = ds.features[tags_field].feature
    names = getattr(feat, "names", None)
    return [
        Sentence(list(r["tokens"]), [names[t] if names else t for t in r[tags_field]], None, f"{name}:{split}:{i}")
        for i, r in enumerate(ds)
    ]


# MultiNERD (Tedeschi & Navigli, 2022) as distributed by Babelscape/multinerd: integer tags in this order.
# (The tner/multinerd copy orders LOC/ORG and PLANT/MYTH differently: do not mix the two.)
MULTINERD_TYPES = ["PER", "ORG", "LOC", "ANIM", "BIO", "CEL", "DIS", "EVE", "FOOD", "INST", "MEDIA", "MYTH", "PLANT",
                   "TIME", "VEHI"]
MULTINERD_TAGS = ["O"] + [f"{p}-{t}" for t in MULTINERD_TYPES for p in ("B", "I")]


def _multinerd_record(tokens, tags, lang, want_lang: str | None, where: str) -> Sentence | None:
    if want_lang is not None and lang != want_lang:
        return None
    if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
        raise DataError(f"{where}: needs lists 'tokens' and 'ner_tags' of equal length")
    try:
        names = [MULTINERD_TAGS[int(t)] for t in tags]
    except (IndexError, ValueError, TypeError):
        raise DataError(f"{where}: ner_tags must be integers 0..{len(MULTINERD_TAGS) - 1}, got {tags}") from None
    return Sentence([str(t) for t in tokens], names, None, where)


def read_multinerd(path: str | Path, lang: str | None = "en") -> list[Sentence]:
    """MultiNERD JSONL on disk ({"tokens", "ner_tags": [int], "lang"}), keeping one language."""
    path = Path(path)
    out, langs = [], Counter()
    for lineno, rec in read_jsonl_records(path):
        langs[rec.get("lang")] += 1
        s = _multinerd_record(rec.get("tokens"), rec.get("ner_tags"), rec.get("lang"), lang, f"{path}:{lineno}")
        if s is not None:
            out.append(s)
    if not out:
        raise DataError(f"{path}: no record has lang={lang!r} (found: {dict(langs.most_common(5))})")
    log.info("%s: %d sentences with lang=%s", path, len(out), lang)
    return out


def read_multinerd_hf(split: str, lang: str = "en") -> list[Sentence]:  # pragma: no cover - online only
    """Babelscape/multinerd from the Hugging Face hub (needs internet and `datasets`), filtered to `lang`."""
    try:
        import datasets
    except ImportError:
        raise DataError("reading 'multinerd:...' needs `pip install datasets` (and internet access)") from None
    ds = datasets.load_dataset("Babelscape/multinerd", split=split).filter(lambda r: r["lang"] == lang)
    return [_multinerd_record(r["tokens"], r["ner_tags"], r["lang"], lang, f"multinerd:{split}:{i}")
            for i, r in enumerate(ds)]


def bundled_split(name: str, split: str) -> list[Sentence]:
    split = SPLIT_ALIASES.get(split, split)
    if name not in BUNDLED or split not in BUNDLED[name]:
        raise DataError(f"unknown bundled corpus {name}:{split}; available: {bundled_names()}")
    ref = resources.files("llm_ner") / "resources" / "data" / name / f"{split}.txt.gz"
    with resources.as_file(ref) as p:
        sents = read_conll(p)
    for s in sents:  # name the corpus, not a temp path
        s.origin = s.origin.replace(str(p), f"{name}:{split}") if s.origin else None
    return sents


def bundled_names() -> list[str]:
    return [f"{n}:{s}" for n, splits in BUNDLED.items() for s in splits]


def read_tokens(path: str | Path) -> list[Sentence]:
    """A token per line, blank lines between sentences, no tags (what a tokenizer writes): sentences tagged O, to be
    predicted."""
    path = Path(path)
    out: list[Sentence] = []
    tokens: list[str] = []
    start = 0
    for lineno, line in enumerate([*open_text(path), ""], 1):
        if line.strip():
            if len(line.split()) != 1:
                raise DataError(f"{path}:{lineno}: expected one token per line (no tags), got {line!r}")
            start = start or lineno
            tokens.append(line.strip())
        elif tokens:
            out.append(Sentence(tokens, ["O"] * len(tokens), None, f"{path}:{start}"))
            tokens, start = [], 0
    if not out:
        raise DataError(f"{path}: no tokens found (empty file?)")
    return out


