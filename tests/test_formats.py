"""No file read wrong in silence (issue 21, item 2): each input below was read without an error, and wrongly, before
(reproduced on e6ebd65). Each must now be read correctly or refused with a one-line error that names the file, the
line or record, and how to declare what was meant."""

import json

import pytest
from typer.testing import CliRunner

from llm_ner.cli import app
from llm_ner.data import DataError, detect_format, load_corpus, read_conll, read_texts
from llm_ner.evaluation.evaluate import score_files

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


runner = CliRunner()


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_text_lines_ending_in_tag_shaped_words_are_text(tmp_path, tiny_ner_dir):
    p = write(tmp_path, "notes.txt", "We took the S-Bahn\nTraffic on I-95\n")
    assert detect_format(p, allow_text=True) == "text"
    assert read_texts(p) == ("text", ["We took the S-Bahn", "Traffic on I-95"])
    with pytest.raises(DataError, match="none is tagged O.*--format conll"):
        load_corpus(p)  # as labelled data: refused, not an entity type "Bahn"
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(p), "--output",
                            str(tmp_path / "o.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [x["text"] for x in rows] == ["We took the S-Bahn", "Traffic on I-95"]  # one record per line
    r = runner.invoke(app, ["stats", str(p)])
    assert r.exit_code == 2 and "none is tagged O" in r.output and "Bahn" not in r.output.replace("S-Bahn", "")


def test_strict_checks_iob2_whatever_the_detection(tmp_path):
    p = write(tmp_path, "a.conll", "said O\nYork I-LOC\n")
    assert load_corpus(p)[0].tags == ["O", "B-LOC"]  # not strict: read as IOB1, as before
    with pytest.raises(DataError, match=r"a.conll:1 token 2: tag 'I-LOC' follows 'O'"):
        load_corpus(p, strict=True)
    with pytest.raises(DataError, match="strict mode checks IOB2, but the scheme is declared iob1"):
        load_corpus(p, scheme="iob1", strict=True)


def test_a_token_per_line_file_without_tags_is_predicted_as_tokens(tmp_path, tiny_ner_dir):
    p = write(tmp_path, "tokens.txt", "Peter\nvisited\nNew\nYork\n.\n\nApple\nhired\nJohn\n")
    assert detect_format(p, allow_text=True) == "tokens"
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(p), "--output",
                            str(tmp_path / "o.conll")])
    assert r.exit_code == 0, r.output
    out = (tmp_path / "o.conll").read_text().split("\n\n")
    rows = [[line.split() for line in block.splitlines()] for block in out if block.strip()]
    assert [[c[0] for c in s] for s in rows] == [["Peter", "visited", "New", "York", "."], ["Apple", "hired", "John"]]
    assert all(len(c) == 2 for s in rows for c in s)  # token pred: no made-up gold column
    with pytest.raises(DataError, match="no labels"):
        load_corpus(p, fmt="tokens")


def test_integer_tags_are_never_guessed_to_be_multinerd(tmp_path):
    rec = {"tokens": ["Paris", "Hilton"], "ner_tags": [3, 4], "lang": "en"}  # 3, 4: B-ORG I-ORG only in MultiNERD
    p = write(tmp_path, "wiki.jsonl", json.dumps(rec) + "\n")
    with pytest.raises(DataError, match="integer tags need the label names.*--format multinerd"):
        load_corpus(p)
    assert load_corpus(p, fmt="multinerd")[0].tags == ["B-ORG", "I-ORG"]  # declared: Babelscape's order
    de = write(tmp_path, "de.jsonl", json.dumps({**rec, "lang": "de"}) + "\n")
    with pytest.raises(DataError, match=r"no record has lang='en' \(found: \{'de': 1\}\)"):
        load_corpus(de, fmt="multinerd")


@pytest.mark.parametrize("name,records,msg", [
    ("spans.jsonl", [{"text": "Peter ran", "entities": [{"start": 0, "end": 5, "label": "PER"}]},
                     {"text": "Ann ran", "entites": [{"start": 0, "end": 3, "label": "PER"}]}],
     r"spans.jsonl:2 \(record 2\): record needs a string 'text' and a list 'entities'.*"
     r"found keys \['entites', 'text'\]"),
    ("doccano.jsonl", [{"text": "Peter ran", "label": [[0, 5, "PER"]]}, {"text": "Ann ran", "labels": [[0, 3, "PER"]]}],
     r"doccano.jsonl:2: a doccano record needs 'label'.*found keys \['labels', 'text'\]"),
])
def test_a_record_with_its_entities_key_missing_is_refused(tmp_path, name, records, msg):
    p = write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match=msg):
        load_corpus(p)


def test_label_studio_hypertext_regions_and_ambiguous_utf16_offsets(tmp_path):
    html = [{"id": 1, "data": {"text": "<p>Peter ran</p>"}, "annotations": [{"result": [
        {"type": "hypertextlabels", "value": {"start": "/p[1]/text()[1]", "end": "/p[1]/text()[1]", "startOffset": 0,
                                              "endOffset": 5, "hypertextlabels": ["PER"]}}]}]}]
    p = write(tmp_path, "html.json", json.dumps(html))
    with pytest.raises(DataError, match=r"task 1, id 1\): result\[0\] is a 'hypertextlabels' region"):
        load_corpus(p)
    # "😀 Ann ran": Ann is [2,5) in code points, [3,6) in the UTF-16 units older exports stored; without value.text
    # there is no telling which
    old = [{"id": 2, "data": {"text": "😀 Ann ran"}, "annotations": [{"result": [
        {"type": "labels", "value": {"start": 3, "end": 6, "labels": ["PER"]}}]}]}]
    p = write(tmp_path, "old.json", json.dumps(old))
    with pytest.raises(DataError, match="no stored text.*outside the BMP"):
        load_corpus(p)
    old[0]["annotations"][0]["result"][0]["value"]["text"] = "Ann"  # with the text: converted, as before
    p = write(tmp_path, "old.json", json.dumps(old))
    assert load_corpus(p)[0].tags == ["O", "B-PER", "O"]


def test_conll_columns_are_decided_per_file(tmp_path):
    """Tabs if every line has one (a token may hold spaces), else whitespace; a file that mixes them is refused
    naming the line (split at whitespace, "New York<TAB>B-LOC" would become the token "New"). A document marker is a
    marker whatever separates its columns."""
    p = write(tmp_path, "spaces.conll", "Peter NNP B-PER\nran VBD O\n")
    assert [s.tokens for s in load_corpus(p)] == [["Peter", "ran"]]
    p = write(tmp_path, "tabs.conll", "New York\tB-LOC\nis\tO\n")  # every line has a tab: a token may hold spaces
    assert load_corpus(p)[0].tokens == ["New York", "is"]
    p = write(tmp_path, "mixed.conll", "New York\tB-LOC\nis\tO\nbig O\n")
    with pytest.raises(DataError, match=r"mixed.conll:3: this line separates columns by spaces, the file by tabs"):
        load_corpus(p)
    for marker in ("-DOCSTART- -X- -X- O", "-DOCSTART- O", "-DOCSTART-\tO"):
        p = write(tmp_path, "doc.tsv", f"{marker}\n\nNew York\tB-LOC\nis\tO\n\n{marker}\n\nPeter\tB-PER\n")
        sents = load_corpus(p)
        assert [s.tokens for s in sents] == [["New York", "is"], ["Peter"]], marker
        assert sents[0].doc_id != sents[1].doc_id


def test_conll_chunk_column_last_and_gold_pred_files(tmp_path):
    p = write(tmp_path, "chunks.conll", "EU NNP B-ORG B-NP\nrejects VBZ O B-VP\n, , O O\nGerman JJ B-MISC B-NP\n")
    with pytest.raises(DataError, match=r"chunks.conll: the last column holds syntactic chunk tags \(NP, VP\)"):
        load_corpus(p)
    pred = write(tmp_path, "pred.conll", "EU B-ORG B-PER\nrejects O O\nGerman B-MISC O\n")
    with pytest.raises(DataError, match="gold pred"):
        load_corpus(pred)  # as gold data it would score the predictions against themselves
    gold = write(tmp_path, "gold.conll", "EU B-ORG\nrejects O\nGerman B-MISC\n")
    m = score_files(pred, pred)  # a predictions file as gold: its gold column; as pred: its predictions
    assert m["f1"] == score_files(gold, pred)["f1"] < 100
    assert read_conll(pred, pairs="gold")[0].tags == ["B-ORG", "O", "B-MISC"]


def test_line_separators_inside_a_line_do_not_split_it(tmp_path, tiny_ner_dir):
    p = write(tmp_path, "t.txt", "one\u2028still one\x85and\x0cone\nsecond\n")
    kind, texts = read_texts(p)
    assert kind == "text" and texts == ["one\u2028still one\x85and\x0cone", "second"]
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(p), "--output",
                            str(tmp_path / "o.jsonl")])
    assert r.exit_code == 0 and len((tmp_path / "o.jsonl").read_text().splitlines()) == 2


def test_fractional_offsets_are_refused_not_truncated(tmp_path):
    p = write(tmp_path, "f.jsonl", json.dumps({"text": "Peter ran", "entities": [
        {"start": 0, "end": 4.9, "label": "PER"}]}) + "\n")
    with pytest.raises(DataError, match=r"f.jsonl:1 \(record 1\): offset 4.9 is not a whole number"):
        load_corpus(p)
    p = write(tmp_path, "g.jsonl", json.dumps({"text": "Peter ran", "entities": [
        {"start": 0.0, "end": 5.0, "label": "PER"}]}) + "\n")
    assert load_corpus(p)[0].tags == ["B-PER", "O"]  # whole floats are whole numbers


def test_every_list_of_formats_comes_from_the_registry(tmp_path):
    from llm_ner.config import load_config
    from llm_ner.data import FORMATS, load_split
    from llm_ner.serving.batch import STREAMED

    assert load_config(None, {"data.format": "label-studio"}).data.format == "label-studio"  # refused before
    with pytest.raises(DataError, match="unknown format 'labelstudio'; use auto or one of conll, jsonl-tokens"):
        load_split(load_config(None, {"data.format": "labelstudio"}), "train")
    helps = runner.invoke(app, ["predict", "--help"], terminal_width=400).output
    assert all(n in helps for n, f in FORMATS.items() if f.texts)
    listed = runner.invoke(app, ["formats"]).output
    assert all(f"| {n} |" in listed for n in FORMATS)
    assert set(STREAMED) <= {n for n, f in FORMATS.items() if f.texts} and "text" in STREAMED
    p = write(tmp_path, "x.conll", "Peter B-PER\nran O\n")
    r = runner.invoke(app, ["predict", "--model", "none", "--input", str(p), "--format", "conl"])
    assert r.exit_code == 2 and "unknown format 'conl'" in r.output


def test_quickstart_help_comes_from_its_config():
    from llm_ner.config import load_config

    c = load_config("quickstart", {})
    out = " ".join(runner.invoke(app, ["quickstart", "--help"], terminal_width=400).output.split())
    assert f"{c.model.backbone}, {c.training.mode} fine-tuning on the first {c.data.max_train_sentences}" in out
    assert "SmolLM2" not in out and "10 min" not in out
