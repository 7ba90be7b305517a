"""`llm-ner export --format onnx | openvino`: the network as a graph, checked against PyTorch before it is written, and
loaded by NERModel / predict / serve with its runtime (tiny models built in code)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_serve import post, start_server
from tiny import CORPUS, ner_config
from typer.testing import CliRunner
from venvs import locked_venv

from llm_ner.cli import app
from llm_ner.errors import UserError
from llm_ner.inference.engine import NERModel

pytestmark = pytest.mark.outputs
TYPES = ["LOC", "MISC", "ORG", "PER"]  # CoNLL's: the export checks on the bundled CoNLL-2003 dev by default
CHECK = "50"


@pytest.fixture(scope="module")
def conll_model(tmp_path_factory):
    """A 2-layer tiny Llama (exporting costs seconds a layer) with CoNLL's types, saved."""
    import torch
    from tiny import make_llama

    from llm_ner.inference.engine import load_tokenizer
    from llm_ner.labels import LabelSet
    from llm_ner.modeling.model import LLMForTokenClassification

    backbone = make_llama(tmp_path_factory.mktemp("llama2"), layers=2)
    torch.manual_seed(0)
    model = LLMForTokenClassification.from_backbone(ner_config(LabelSet.from_types(TYPES), str(backbone),
                                                               mode="frozen"))
    with torch.no_grad():
        model.classifier.weight.normal_(std=2.0)  # so that it predicts entities
    d = tmp_path_factory.mktemp("export") / "model"
    model.save_pretrained(d, tokenizer=load_tokenizer(str(backbone)))
    return d


@pytest.fixture(scope="module")
def exported(conll_model):
    """Both formats, written by the command a user runs."""
    out = {}
    for fmt in ("onnx", "openvino"):
        out[fmt] = conll_model.parent / fmt
        r = CliRunner().invoke(app, ["export", "--model", str(conll_model), "--output", str(out[fmt]), "--format", fmt,
                                     "--check-sentences", CHECK])
        assert r.exit_code == 0, r.output
        assert f"wrote {out[fmt]} ({fmt}, runs at" in r.output
    return out


def spans(entities):
    return [[(e.start, e.end, e.label) for e in x] for x in entities]


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_export_predicts_what_the_pytorch_model_predicts(conll_model, exported, fmt):
    from llm_ner.data import load_corpus

    ref = NERModel.from_pretrained(conll_model, precision="fp32")
    ner = NERModel.from_pretrained(exported[fmt])
    assert (ner.runtime, ner.precision) == (fmt, "fp32")  # no native-bf16 speed-up holds on a random tiny model
    texts = CORPUS + [" ".join(s.tokens) for s in load_corpus("conll2003:test", limit=20)]
    want = ref(texts)
    assert sum(map(len, want.entities)) > 5  # something to compare
    got = ner(texts).entities
    assert spans(got) == spans(want.entities)  # spans and labels exactly; scores as floats from other kernels do
    for a, b in zip(got, want.entities, strict=True):
        assert [e.score for e in a] == pytest.approx([e.score for e in b], abs=2e-3)
    # one window a row (no packing) runs the same graph: segment ids = the attention mask
    unpacked = NERModel.from_pretrained(exported[fmt], max_batch_tokens=None)
    assert unpacked(texts).tags == want.tags
    record = json.loads((exported[fmt] / "llm_ner_export.json").read_text())
    assert record["precision"] == "fp32" and record["check"]["fp32"]["span_agreement"] >= 99
    assert record["check_sentences"] == int(CHECK) and record["packed"] is True
    # its tokenizer.json gave transformers' ids and offsets on the check set: run by `tokenizers` alone
    from llm_ner.inference.runtimes import BareTokenizer

    assert record["bare_tokenizer"] is True and isinstance(ner.tokenizer, BareTokenizer)
    record["bare_tokenizer"] = False  # else transformers' tokenizer: the same spans
    (exported[fmt] / "llm_ner_export.json").write_text(json.dumps(record))
    try:
        hf = NERModel.from_pretrained(exported[fmt])
        assert not isinstance(hf.tokenizer, BareTokenizer) and spans(hf(texts).entities) == spans(got)
    finally:
        record["bare_tokenizer"] = True
        (exported[fmt] / "llm_ner_export.json").write_text(json.dumps(record))


def test_what_an_export_refuses(conll_model, exported, tmp_path, monkeypatch):
    from llm_ner.evaluation import export as E
    from llm_ner.modeling.model import LLMForTokenClassification
    from llm_ner.modeling.persistence import ModelLoadError

    runner = CliRunner()
    for args, says in [
        (["predict", "--model", str(conll_model), "--runtime", "onnx", "--text", "x"], "llm-ner export"),
        (["predict", "--model", str(exported["onnx"]), "--runtime", "openvino", "--text", "x"], "--runtime onnx"),
        (["predict", "--model", str(exported["onnx"]), "--runtime", "tensorrt", "--text", "x"], "use one of"),
        (["predict", "--model", str(exported["onnx"]), "--precision", "int8", "--text", "x"], "without int8"),
        (["export", "--model", str(exported["onnx"]), "--output", str(tmp_path / "x"), "--format", "onnx"],
         "already an onnx export"),
        (["export", "--model", str(conll_model), "--output", str(exported["onnx"]), "--format", "onnx"],
         "not an empty dir"),
        (["export", "--model", str(conll_model), "--output", str(tmp_path / "x"), "--format", "tflite"], "use one of"),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, (args, r.output)
    with pytest.raises(ModelLoadError, match="an onnx export"):
        LLMForTokenClassification.from_pretrained(exported["onnx"])
    # a check that does not hold: nothing is written, and int8 is refused by name (the graph: the onnx export's
    # files, copied in place of a second export)
    monkeypatch.setattr(E, "AGREEMENT", 1.01)
    monkeypatch.setattr(E, "write_graph", lambda model, folder, fmt, int8: [
        shutil.copy(f, folder / f.name) for f in exported["onnx"].glob("model.onnx*")])
    with pytest.raises(UserError, match="int8 is refused"):
        E.export_model(conll_model, tmp_path / "int8", "onnx", int8=True, check_sentences=int(CHECK))
    assert not (tmp_path / "int8").exists() and not list(tmp_path.glob(".int8*"))


def test_int8_when_its_check_holds(conll_model, tmp_path, monkeypatch):
    from llm_ner.evaluation import export as E

    monkeypatch.setattr(E, "F1_DROP", 100.0)  # a random tiny model's spans are not what int8 is judged on here
    monkeypatch.setattr(E, "AGREEMENT", 0.0)
    rec = E.export_model(conll_model, tmp_path / "int8", "onnx", int8=True, check_sentences=int(CHECK))
    assert rec["precision"] == "int8" and rec["int8"] is True
    ner = NERModel.from_pretrained(tmp_path / "int8")
    assert (ner.runtime, ner.precision) == ("onnx", "int8")
    assert len(ner(CORPUS).tags) == len(CORPUS)
    with pytest.raises(UserError, match="with int8 weights"):
        NERModel.from_pretrained(tmp_path / "int8", precision="fp32")


def test_a_model_of_other_types_needs_a_check_file(tiny_ner_dir, tmp_path):
    r = CliRunner().invoke(app, ["export", "--model", str(tiny_ner_dir), "--output", str(tmp_path / "x"),
                                 "--format", "onnx"])
    assert r.exit_code == 2 and "give --check a labelled file" in r.output


def test_serve_runs_an_export_and_will_not_retrain_it(conll_model, exported, tmp_path):
    from fastapi.testclient import TestClient

    from llm_ner.serving.serve import create_app
    from llm_ner.serving.settings import ServeConfig

    ref = NERModel.from_pretrained(conll_model, precision="fp32")(CORPUS[:2]).to("records")
    with TestClient(create_app(ServeConfig(str(exported["openvino"])))) as client:
        r = client.post("/v1/entities", json={"texts": CORPUS[:2]})
        assert r.status_code == 200, r.text
        got = r.json()
    assert [[(e["start"], e["end"], e["label"]) for e in x["entities"]] for x in got["results"]] == \
        [[(e["start"], e["end"], e["label"]) for e in x["entities"]] for x in ref]
    with pytest.raises(UserError, match="needs its PyTorch weights"):
        ServeConfig(str(exported["onnx"]), train_dir=str(tmp_path / "rounds"))


def test_select_diverse_needs_the_pytorch_model(exported, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(CORPUS))
    r = CliRunner().invoke(app, ["select", "--model", str(exported["onnx"]), "--pool", str(pool), "--n", "2",
                                 "--output", str(tmp_path / "out.json")])
    assert r.exit_code == 2 and "--strategy uncertainty" in r.output
    r = CliRunner().invoke(app, ["select", "--model", str(exported["onnx"]), "--pool", str(pool), "--n", "2",
                                 "--output", str(tmp_path / "out.json"), "--strategy", "uncertainty"])
    assert r.exit_code == 0, r.output


def test_batch_predict_actors_load_an_export(exported):
    """What each Ray actor builds (batch-predict's own options), on an export: its runtime, --batch-size kept."""
    from llm_ner.serving.batch import NERBatchPredictor, predictor_args

    actor = NERBatchPredictor(**predictor_args(str(exported["onnx"]), 3, 1, "auto", None, False))
    assert (actor.ner.runtime, actor.ner.batch_size) == ("onnx", 3)
    out = actor({"text": CORPUS[:2]})
    assert len(out["entities"]) == 2


def test_an_export_predicts_and_serves_without_pytorch(conll_model, exported, tmp_path):
    """The serving image for exports (Dockerfile.export) installs locks/serve-export.txt — no PyTorch in it — and the
    project with --no-deps: the same install as a venv (the project from this checkout), then `predict` on the ONNX
    export and `serve` of the OpenVINO one, over HTTP, answer what the PyTorch model answers."""
    venv = locked_venv("serve-export")
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0  # truly absent
    want = [[(e.start, e.end, e.label) for e in x] for x in NERModel.from_pretrained(conll_model, precision="fp32")(
        CORPUS).entities]
    (tmp_path / "in.txt").write_text("\n".join(CORPUS) + "\n")
    r = subprocess.run([python, "-m", "llm_ner.cli", "predict", "--model", str(exported["onnx"]), "--input",
                        str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.jsonl")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [[(e["start"], e["end"], e["label"]) for e in x["entities"]] for x in rows] == want
    r = subprocess.run([python, "-m", "llm_ner.cli", "predict", "--model", str(conll_model), "--text", "x"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "has no PyTorch" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    docker = (Path(__file__).resolve().parent.parent / "Dockerfile.export").read_text()
    assert "pip install --require-hashes -r serve-export.txt" in docker and "pip install --no-deps ." in docker
    proc, url = start_server(exported["openvino"], python=python, env=env)
    try:
        status, body = post(url, {"texts": CORPUS})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert status == 200, body
    assert [[(e["start"], e["end"], e["label"]) for e in x["entities"]] for x in body["results"]] == want


def test_runtime_auto_runs_the_fastest_export_inside_a_model_dir(conll_model, exported, tmp_path, monkeypatch):
    """`llm-ner export` without --output writes into the model dir (MODEL/onnx, as HF repos carry onnx/), with the
    check's words/s beside PyTorch's; from then on auto runs the fastest export that held and beat PyTorch."""
    from llm_ner.evaluation import export as E
    from llm_ner.modeling.persistence import EXPORT_RECORD

    model = tmp_path / "model"
    shutil.copytree(conll_model, model)
    assert NERModel.from_pretrained(model).runtime == "torch"  # nothing inside yet
    monkeypatch.setattr(E, "write_graph", lambda m, folder, fmt, int8: [  # the graph: the onnx export's, copied
        shutil.copy(f, folder / f.name) for f in exported["onnx"].glob("model.onnx*")])
    r = CliRunner().invoke(app, ["export", "--model", str(model), "--format", "onnx", "--check-sentences", CHECK])
    assert r.exit_code == 0 and f"wrote {model / 'onnx'}" in r.output and "words/s against PyTorch's" in r.output
    rec = json.loads((model / "onnx" / EXPORT_RECORD).read_text())
    assert rec["check"]["fp32"]["words_per_second"] > 0 and rec["torch_words_per_second"]["fp32"] > 0
    shutil.copytree(exported["openvino"], model / "openvino")

    def speeds(fmt, wps, torch_wps):  # what each export's check measured, set to each case in turn
        f = model / fmt / EXPORT_RECORD
        rec = json.loads(f.read_text())
        rec["check"][rec["precision"]]["words_per_second"], rec["torch_words_per_second"] = wps, {"fp32": torch_wps}
        f.write_text(json.dumps(rec))

    speeds("onnx", 900.0, 500.0)
    speeds("openvino", 1500.0, 500.0)
    ner = NERModel.from_pretrained(model)
    assert (ner.runtime, ner.precision) == ("openvino", "fp32")
    assert ner(CORPUS).tags == NERModel.from_pretrained(model, precision="fp32")(CORPUS).tags
    assert NERModel.from_pretrained(model, precision="fp32").runtime == "torch"  # a precision asked for: PyTorch's
    assert NERModel.from_pretrained(model, runtime="torch").runtime == "torch"
    speeds("openvino", 400.0, 500.0)  # slower than PyTorch in its check: the next fastest
    assert NERModel.from_pretrained(model).runtime == "onnx"
    speeds("onnx", 450.0, 500.0)
    assert NERModel.from_pretrained(model).runtime == "torch"
