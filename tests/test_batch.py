"""Ray Data batch prediction in its single-machine mode: the same answers as NERModel, every input once."""

import json

import pytest

ray = pytest.importorskip("ray")

from llm_ner.inference.engine import NERModel  # noqa: E402
from llm_ner.serving.batch import ray_predict  # noqa: E402

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels



def test_ray_batch_predict_matches_direct_prediction(tiny_ner_dir, tmp_path, ray_session):
    texts = [f"Peter visited New York and Washington on day {i} ." for i in range(40)] + ["", "Apple hired John ."]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    n = ray_predict(str(tiny_ner_dir), str(src), str(tmp_path / "out"), batch_size=16, threads=1)
    assert n == len(texts)
    rows = [json.loads(line) for f in sorted((tmp_path / "out").glob("*.json")) for line in f.open()]
    got = {r["id"]: json.loads(r["entities"]) for r in rows}
    assert sorted(got) == list(range(len(texts)))  # every input once, ids carried through
    want = NERModel.from_pretrained(tiny_ner_dir)(texts).entities
    assert sum(map(len, want)) > 0
    for i, ents in enumerate(want):
        assert [(e["start"], e["end"], e["label"]) for e in got[i]] == [(e.start, e.end, e.label) for e in ents]


def test_a_bad_line_is_named_before_ray_starts(tiny_ner_dir, tmp_path):
    from typer.testing import CliRunner

    from llm_ner.cli import app

    src = tmp_path / "corpus.jsonl"
    src.write_text('{"text": "Peter ran"}\n{"text": "Ann", oops}\n')
    r = CliRunner().invoke(app, ["batch-predict", "--model", str(tiny_ner_dir), "--input", str(src), "--output",
                                 str(tmp_path / "out")])
    assert r.exit_code == 2 and "corpus.jsonl:2: invalid JSON" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_gzipped_input_an_occupied_folder_and_the_batch_size(tiny_ner_dir, tmp_path, ray_session):
    """Issue 43: .jsonl.gz was a UnicodeDecodeError traceback; an output folder with files in it got Ray's files
    beside them and a count of every line there; --batch-size never reached the model."""
    import gzip

    from typer.testing import CliRunner

    from llm_ner.cli import app
    from llm_ner.serving.batch import NERBatchPredictor, predictor_args

    texts = ["Peter visited New York .", "Apple hired John ."] * 3
    src = tmp_path / "corpus.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in texts).encode()))
    assert ray_predict(str(tiny_ner_dir), str(src), str(tmp_path / "out"), batch_size=4, threads=1) == len(texts)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.json").write_text('{"text": "x"}\n' * 5)
    r = CliRunner().invoke(app, ["batch-predict", "--model", str(tiny_ner_dir), "--input", str(src), "--output",
                                 str(busy)])
    assert r.exit_code == 2 and "not an empty folder" in r.output and len(r.output.strip().splitlines()) == 1
    assert [p.name for p in busy.iterdir()] == ["old.json"]
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"text": "caf\xe9"}\n'))  # Latin-1 inside the gzip
    r = CliRunner().invoke(app, ["batch-predict", "--model", str(tiny_ner_dir), "--input", str(broken), "--output",
                                 str(tmp_path / "o2")])
    assert r.exit_code == 2 and "UTF-8" in r.output and "Traceback" not in r.output, r.output
    assert NERBatchPredictor(**predictor_args(str(tiny_ner_dir), 3, 1, "fp32", None, False)).ner.batch_size == 3
