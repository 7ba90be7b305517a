"""Annotation-tool round trips: Label Studio JSON exports, doccano JSONL and spaCy DocBin files are read wherever a
corpus is accepted (recognised by content), validated like span JSONL, and predictions go back out as pre-annotations
that read in again as the same spans."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_ner.cli import app
from llm_ner.data import DataError, detect_format, load_corpus, spans
from llm_ner.data.annotation import doccano_records, label_studio_records

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


FIX = Path(__file__).parent / "fixtures" / "annotation"
runner = CliRunner()

WANT = [  # the fixtures' four shared sentences: (entity text, label)
    [("Peter Blackburn", "PER"), ("European Commission", "ORG"), ("Brussels", "LOC")],
    [("Apple", "ORG"), ("John Smith", "PER"), ("Google", "ORG"), ("London", "LOC")],
    [("iPhone 15", "PRODUCT"), ("Germany", "LOC"), ("Tim Cook", "PER")],
    [("Maria Garcia", "PER"), ("Madrid", "LOC"), ("Tokyo", "LOC"), ("Sony", "ORG")],
]


def entities(sent) -> list[tuple[str, str]]:
    return [(" ".join(sent.tokens[s : e + 1]), t) for t, s, e in spans(sent.tags)]


def make_docbin(path: Path) -> Path:
    """A .spacy file written by spaCy itself (what `spacy convert` / Prodigy's data-to-spacy produce)."""
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    db = DocBin()
    for line in (FIX / "doccano.jsonl").read_text().splitlines():
        rec = json.loads(line)
        doc = nlp(rec["text"])
        doc.ents = [doc.char_span(s, e, label=lab) for s, e, lab in rec["label"]]
        db.add(doc)
    db.to_disk(path)
    return path


@pytest.fixture
def docbin(tmp_path) -> Path:
    return make_docbin(tmp_path / "train.spacy")


def test_each_format_is_recognised_by_content_not_name(tmp_path, docbin):
    # misleading names: the content decides
    for src, name, fmt in ((FIX / "label_studio.json", "export.txt", "label-studio"),
                           (FIX / "doccano.jsonl", "data.conll", "doccano"), (docbin, "corpus.json", "spacy")):
        shutil.copy(src, tmp_path / name)
        assert detect_format(tmp_path / name) == fmt


def test_label_studio_export_is_read(caplog):
    sents = load_corpus(FIX / "label_studio.json")
    assert [entities(s) for s in sents[:4]] == WANT  # cancelled annotation skipped, choices ignored
    # UTF-16 offsets of an older export after an emoji: converted, because the stored span text says so
    assert entities(sents[4]) == [("Lisa Su", "PER"), ("AMD", "ORG")]
    assert len(sents) == 5 and "1 tasks have neither annotations nor predictions" in caplog.text
    assert "task 5, id 5" in sents[4].origin


def test_doccano_and_docbin_are_read(docbin):
    assert [entities(s) for s in load_corpus(FIX / "doccano.jsonl")] == WANT
    assert [entities(s) for s in load_corpus(docbin)] == WANT


def test_doccano_relation_export_is_read(tmp_path):
    p = tmp_path / "rel.jsonl"
    p.write_text(json.dumps({"id": 1, "text": "Tim Cook runs Apple .", "relations": [], "entities": [
        {"id": 3, "label": "PER", "start_offset": 0, "end_offset": 8},
        {"id": 4, "label": "ORG", "start_offset": 14, "end_offset": 19}]}) + "\n")
    assert [entities(s) for s in load_corpus(p)] == [[("Tim Cook", "PER"), ("Apple", "ORG")]]


def _ls(tmp_path, value, text="Peter visited Paris ."):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([{"id": 9, "data": {"text": text}, "annotations": [{"result": [
        {"type": "labels", "value": v} for v in value]}]}]))
    return p


@pytest.mark.parametrize("values, message", [
    ([{"start": 0, "end": 5, "labels": ["PER"]}, {"start": 3, "end": 13, "labels": ["LOC"]}], "overlaps entity PER"),
    ([{"start": 14, "end": 40, "labels": ["LOC"]}], "lies outside the text"),
    ([{"start": 0, "end": 3, "labels": ["PER"]}], "cuts a word"),
    ([{"start": 0, "end": 5, "labels": ["PER", "ORG"]}], "exactly one label"),
    ([{"start": 0, "end": 5, "text": "Paris", "labels": ["PER"]}], "the file says 'Paris'"),
    ([{"end": 5, "labels": ["PER"]}], "needs integer 'start' and 'end'"),
])
def test_label_studio_errors_name_the_task(tmp_path, values, message):
    with pytest.raises(DataError, match=message) as e:
        load_corpus(_ls(tmp_path, values))
    assert "bad.json (task 1, id 9)" in str(e.value)


def test_doccano_errors_name_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "Peter visited Paris .", "label": [[0, 5, "PER"]]}) + "\n"
                 + json.dumps({"text": "Tim runs Apple .", "label": [[0, 3, "PER"], [2, 8, "ORG"]]}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: entity ORG \[2,8\) overlaps"):
        load_corpus(p)
    p.write_text(json.dumps({"text": "Peter visited Paris .", "label": [[0, "PER"]]}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: label\[0\] must be \[start, end, label\]"):
        load_corpus(p)


def test_damaged_docbin_is_a_clear_error(tmp_path, docbin):
    raw = docbin.read_bytes()
    (tmp_path / "cut.spacy").write_bytes(raw[: len(raw) // 2])
    r = runner.invoke(app, ["stats", str(tmp_path / "cut.spacy")])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output, r.output


def test_labels_outside_the_schema_are_named(tmp_path):
    schema = tmp_path / "schema.yaml"
    schema.write_text("types: [PER, ORG, LOC]\n")
    r = runner.invoke(app, ["validate", str(FIX / "label_studio.json"), "--schema", str(schema)])
    assert r.exit_code == 2 and "(task 3, id 3)" in r.output and "['PRODUCT']" in r.output, r.output


def test_stats_and_validate_accept_every_format(docbin):
    for src in (FIX / "label_studio.json", FIX / "doccano.jsonl", docbin):
        for cmd in ("stats", "validate"):
            r = runner.invoke(app, [cmd, str(src)])
            assert r.exit_code == 0, (src, cmd, r.output)


@pytest.mark.parametrize("source, to", [("label_studio.json", "label-studio"), ("doccano.jsonl", "doccano"),
                                        ("train.spacy", "label-studio")])
def test_round_trip_import_train_export_import(tiny_llama, tmp_path, source, to):
    """import -> train a tiny model -> evaluate on the same file -> predict and export as pre-annotations -> import
    the export: the spans read back are exactly the ones predicted."""
    data = make_docbin(tmp_path / source) if source.endswith(".spacy") else FIX / source
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--train", str(data), "--dev", str(data),
                            "--output", str(out), "--max-steps", "4", "--set", "training.eval_steps=2",
                            "--set", "training.calibrate=false", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--model", str(out / "model"), "--data", str(data)])
    assert r.exit_code == 0, r.output
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(json.loads(x)["text"] + "\n" for x in (FIX / "doccano.jsonl").read_text().splitlines()))
    plain = tmp_path / "pred.jsonl"
    r = runner.invoke(app, ["predict", "--model", str(out / "model"), "--input", str(texts), "--output", str(plain)])
    assert r.exit_code == 0, r.output
    predicted = [[(e["start"], e["end"], e["label"]) for e in json.loads(x)["entities"]]
                 for x in plain.read_text().splitlines()]
    assert any(predicted), "the tiny model should predict some entities for the test to mean something"
    export = tmp_path / ("pre.json" if to == "label-studio" else "pre.jsonl")
    r = runner.invoke(app, ["predict", "--model", str(out / "model"), "--input", str(texts), "--output",
                            str(export), "--to", to])
    assert r.exit_code == 0, r.output
    assert detect_format(export) == to
    if to == "label-studio":
        tasks = json.loads(export.read_text())
        assert all(p["model_version"].startswith("run@") for t in tasks for p in t["predictions"])
        records = label_studio_records(tasks, export)
        # what a person does in Label Studio: accept the pre-annotations; the export then holds them as annotations
        for t in tasks:
            t["annotations"] = [{"id": 1, "was_cancelled": False, "result": t["predictions"][0]["result"]}]
        accepted = tmp_path / "accepted.json"
        accepted.write_text(json.dumps(tasks))
        assert [entities(s) for s in load_corpus(accepted)] == [entities(s) for s in load_corpus(export)]
    else:
        records = doccano_records([(i + 1, json.loads(x)) for i, x in enumerate(export.read_text().splitlines())],
                                  export)
    got = [[(e["start"], e["end"], e["label"]) for e in ents] for _, ents, _, _ in records]
    assert got == predicted
