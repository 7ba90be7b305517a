"""Annotation-tool formats: read what Label Studio, doccano and spaCy/Prodigy export as training data, and write
predictions back as pre-annotations a person can correct and export again (the round trip).

  Label Studio  a JSON export: a list of tasks {"data": {"text"}, "annotations": [{"result": [{"type": "labels",
                "value": {"start", "end", "text", "labels": [L]}}]}], "predictions": [...]}
                (labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks)
  doccano       JSONL, sequence labelling: {"text", "label": [[start, end, L], ...]}; the relation export's
                {"text", "entities": [{"start_offset", "end_offset", "label"}]} too (doccano.github.io/doccano)
  spaCy         a .spacy file (DocBin, what `spacy convert` and Prodigy's `data-to-spacy` write): each Doc's
                text and `doc.ents`

This module only parses each tool's layout into records (text, character spans, where, doc id); corpus.py turns
records into sentences with `spans_to_sentence`, so the checks are those of span JSONL: offsets inside the text, no
overlaps, spans on word boundaries — an error names the file and the record.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

from .schemes import DataError

log = logging.getLogger(__name__)

# The names in Label Studio's named-entity template (<Labels name="label" toName="text">, <Text name="text" ...>).
LS_FROM, LS_TO = "label", "text"

Record = tuple[str, list[dict], str, object]  # (text, [{"start", "end", "label"}], where, doc_id)


# Label Studio stores code-point offsets since its emoji fix (label-studio-frontend #308); older exports counted UTF-16
# units. Both are read (the stored span text decides); we write code points.
def _utf16_to_codepoints(text: str, offset: int) -> int:
    """Label Studio's editor counts offsets in UTF-16 code units (JavaScript strings); Python counts code points."""
    units = 0
    for i, ch in enumerate(text):
        if units >= offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def json_line(obj: object) -> str:
    """One JSON-lines record: UTF-8 as it is, but the characters other tools take for line breaks (U+2028, U+2029,
    U+0085) escaped, so a reader that splits at them (Python's str.splitlines, JavaScript) still sees one record."""
    return (json.dumps(obj, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
            .replace("\x85", "\\u0085"))


def offset(value: object, where: str) -> int:
    """A character offset as the file gives it: an integer (a float only if whole, e.g. 3.0). 3.9 is refused, not
    truncated to 3."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where}: offset {value!r} is not a whole number of characters")
    return value


def _checked_span(text: str, start: int, end: int, said: str | None, where: str) -> tuple[int, int]:
    """(start, end) in code points. When the tool stored the span's text, offsets must reproduce it, either as
    code points or as UTF-16 units (then converted) — never guessed past that. Without the stored text, offsets are
    ambiguous exactly when a character outside the BMP (an emoji) precedes the span's end: refused there."""
    if said is None:
        if any(ord(c) > 0xFFFF for c in text[:end]):
            raise DataError(f"{where}: span [{start},{end}) has no stored text ('value.text') and the text holds "
                            "characters outside the BMP (emoji) before it, where Label Studio's older UTF-16 offsets "
                            "and code points differ; export the regions with their text")
        return start, end
    if text[start:end] == said:
        return start, end
    s, e = _utf16_to_codepoints(text, start), _utf16_to_codepoints(text, end)
    if text[s:e] == said:
        return s, e
    raise DataError(f"{where}: span [{start},{end}) is {text[start:end]!r} in the text but the file says {said!r}")


def _ls_text(task: dict, where: str) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{where}: a Label Studio task needs a 'data' object")
    if isinstance(data.get("text"), str):
        return data["text"]
    strings = [k for k, v in data.items() if isinstance(v, str)]
    if len(strings) == 1:  # the template named its text field otherwise ($body, $sentence...): the only string
        return data[strings[0]]
    raise DataError(f"{where}: data has no 'text' field (string fields: {strings}); name it 'text' in the export")


def _ls_result(task: dict) -> tuple[list[dict], str] | None:
    """The regions to read: the first annotation not cancelled; else the first prediction (said in the log)."""
    for ann in task.get("annotations") or []:
        if isinstance(ann, dict) and not ann.get("was_cancelled"):
            return ann.get("result") or [], "annotation"
    preds = task.get("predictions") or []
    if preds and isinstance(preds[0], dict):
        return preds[0].get("result") or [], "prediction"
    return None


def label_studio_records(tasks: object, path: Path, need_labels: bool = True) -> list[Record]:
    """The tasks' texts and entity spans; need_labels=False (prediction input) keeps unlabelled tasks too."""
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio export is a JSON list of tasks")
    records, unlabelled, from_predictions = [], 0, 0
    for k, task in enumerate(tasks):
        where = f"{path} (task {k + 1}{', id ' + str(task.get('id')) if isinstance(task, dict) else ''})"
        if not isinstance(task, dict):
            raise DataError(f"{where}: expected a JSON object")
        text = _ls_text(task, where)
        got = _ls_result(task)
        if got is None or not need_labels:
            if need_labels:
                unlabelled += 1
            else:
                records.append((text, [], where, task.get("id")))
            continue
        result, kind = got
        from_predictions += kind == "prediction"
        ents = []
        for r, region in enumerate(result):
            kind = region.get("type", "labels") if isinstance(region, dict) else None
            if kind != "labels" and str(kind).endswith("labels"):  # hypertextlabels, paragraphlabels, …
                raise DataError(f"{where}: result[{r}] is a {kind!r} region (offsets into HTML or dialogue, not into "
                                "the text): only 'labels' regions on plain text are read; label the project with a "
                                "<Text> tag and <Labels>")
            if kind != "labels":
                continue  # choices, relations, text areas: not entity spans
            v = region.get("value") or {}
            labels = v.get("labels")
            if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
                raise DataError(f"{where}: result[{r}].value.labels must hold exactly one label, got {labels!r}")
            if "start" not in v or "end" not in v:
                raise DataError(f"{where}: result[{r}].value needs integer 'start' and 'end'")
            start, end = offset(v["start"], f"{where} result[{r}]"), offset(v["end"], f"{where} result[{r}]")
            s, e = _checked_span(text, start, end, v.get("text"), where)
            ents.append({"start": s, "end": e, "label": labels[0]})
        records.append((text, ents, where, task.get("id")))
    if unlabelled:
        log.warning("%s: %d tasks have neither annotations nor predictions; skipped", path, unlabelled)
    if from_predictions:
        log.warning("%s: %d tasks have no annotation, only model predictions: their predictions are read as labels",
                    path, from_predictions)
    return records


def doccano_records(lines: list[tuple[int, dict]], path: Path) -> list[Record]:
    records = []
    for lineno, rec in lines:
        where = f"{path}:{lineno}"
        text = rec.get("text")
        if not isinstance(text, str):
            raise DataError(f"{where}: a doccano record needs a string 'text'")
        ents = []
        if "label" not in rec and "entities" not in rec:  # a misspelt key would read as "no entities": refuse
            raise DataError(f"{where}: a doccano record needs 'label' (a list of [start, end, label]; [] for a text "
                            f"with no entities); found keys {sorted(rec)}")
        if "label" in rec:
            spans = rec["label"]
            if not isinstance(spans, list):
                raise DataError(f"{where}: 'label' must be a list of [start, end, label]")
            for i, sp in enumerate(spans):
                if not (isinstance(sp, list) and len(sp) == 3 and isinstance(sp[2], str)):
                    raise DataError(f"{where}: label[{i}] must be [start, end, label], got {sp!r}")
                ents.append({"start": sp[0], "end": sp[1], "label": sp[2]})
        else:
            for i, sp in enumerate(rec.get("entities") or []):
                if not isinstance(sp, dict) or not {"start_offset", "end_offset", "label"} <= set(sp):
                    raise DataError(f"{where}: entities[{i}] needs start_offset, end_offset and label")
                ents.append({"start": sp["start_offset"], "end": sp["end_offset"], "label": sp["label"]})
        records.append((text, ents, where, rec.get("doc_id")))
    return records


def is_docbin(path: Path) -> bool:
    """A spaCy DocBin: zlib-compressed msgpack of a map that starts with 'version' and 'attrs' (DocBin.to_bytes)."""
    with path.open("rb") as f:
        head = f.read(65536)
    if len(head) < 2 or head[0] != 0x78:  # the zlib header byte
        return False
    try:
        d = zlib.decompressobj().decompress(head, 64)
    except zlib.error:
        return False
    return d[1:9] == b"\xa7version" and b"\xa5attrs" in d


def docbin_records(path: Path) -> list[Record]:
    try:
        from spacy.tokens import DocBin
        from spacy.vocab import Vocab
    except ImportError:
        raise DataError(f"{path}: a spaCy .spacy file; reading it needs spaCy (pip install -e \".[spacy]\")") from None
    try:
        docs = list(DocBin().from_disk(path).get_docs(Vocab()))
    except Exception as e:  # DocBin raises ValueError/KeyError/msgpack errors on a damaged file
        raise DataError(f"{path}: not a readable spaCy DocBin ({type(e).__name__}: {e})") from None
    return [(doc.text, [{"start": e.start_char, "end": e.end_char, "label": e.label_} for e in doc.ents],
             f"{path} (doc {k + 1})", None) for k, doc in enumerate(docs)]


# --- writing predictions as pre-annotations ---

def label_studio_prediction(ents: list[dict], model_version: str, score: float | None = None,
                            from_name: str = LS_FROM, to_name: str = LS_TO) -> dict:
    """One Label Studio prediction: a region per entity (with its score), `score` for the whole task where given
    (active learning: how sure the model is of the whole text), else the regions' mean."""
    result = [{"id": f"e{i}", "from_name": from_name, "to_name": to_name, "type": "labels", "score": e["score"],
               "value": {"start": e["start"], "end": e["end"], "text": e["text"], "labels": [e["label"]]}}
              for i, e in enumerate(ents)]
    if score is None:
        score = sum(e["score"] for e in ents) / len(ents) if ents else 1.0
    return {"model_version": model_version, "score": score, "result": result}


def label_studio_tasks(texts: list[str], entities: list[list[dict]], model_version: str,
                       task_scores: list[float | None] | None = None) -> list[dict]:
    """Label Studio import: a task per text, with its prediction (`label_studio_prediction`) as pre-annotation."""
    return [{"data": {"text": text}, "predictions": [label_studio_prediction(ents, model_version, given)]}
            for text, ents, given in zip(texts, entities, task_scores or [None] * len(texts), strict=True)]


def doccano_lines(texts: list[str], entities: list[list[dict]], confidences: list[float | None] | None = None
                  ) -> list[str]:
    """doccano JSONL; a `confidence` field (kept by doccano as metadata) where given."""
    return [json_line({"text": t, "label": [[e["start"], e["end"], e["label"]] for e in ents],
                       **({"confidence": c} if c is not None else {})})
            + "\n" for t, ents, c in zip(texts, entities, confidences or [None] * len(texts), strict=True)]
