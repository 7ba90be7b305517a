
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_ner.cli import app

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_system_a_vs_b(tiny_llama, tmp_path):
    r = runner.invoke(app, ["systems", "--keep", "PER,LOC", "--output", str(tmp_path / "ab"),
                            "--set", f"model.backbone={tiny_llama}", "--set", "data.max_train_sentences=24",
                            "--set", "data.max_dev_sentences=8", "--set", "data.max_test_sentences=16",
                            "--set", "training.max_steps=2", "--set", "training.eval_steps=2", "--no-progress"])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "ab" / "systems_ab.json").read_text())
    b_cfg = json.loads((tmp_path / "ab" / "system_b" / "model" / "llm_ner_config.json").read_text())
    assert b_cfg["labels"]["types"] == ["LOC", "PER"]
    assert set(res["system_a"]["per_type"]) == {"LOC", "MISC", "ORG", "PER"}
    assert set(res["system_a_shared"]["per_type"]) <= {"LOC", "PER"}
    # on shared types, A and B are scored against the same gold entities
    assert res["system_a_shared"]["gold_entities"] == res["system_b"]["gold_entities"]
    # per-type scores of a kept type do not depend on the restriction
    for t in res["system_a_shared"]["per_type"]:
        assert res["system_a_shared"]["per_type"][t] == res["system_a"]["per_type"][t]
    assert "shared types (PER, LOC)" in (tmp_path / "ab" / "systems_ab.md").read_text()


def test_validate_pii_examples_and_errors(tmp_path):
    r = runner.invoke(app, ["validate", str(ROOT / "examples/pii/train.jsonl"), "--schema",
                            str(ROOT / "examples/pii/schema.yaml")])
    assert r.exit_code == 0, r.output
    assert "EMAIL 'maria.lopez@example.com' -> ['maria.lopez@example.com']" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Call Bob now", "entities": [{"start": 5, "end": 8, "label": "NAME"}]}) + "\n"
                   + json.dumps({"text": "Call Bob now", "entities": [{"start": 5, "end": 8, "label": "PET"}]}) + "\n")
    r = runner.invoke(app, ["validate", str(bad), "--schema", str(ROOT / "examples/pii/schema.yaml")])
    assert r.exit_code == 2 and "bad.jsonl:2 (record 2): labels ['PET'] are not in the schema" in r.output


def test_schema_travels_with_model_and_odd_inputs(tiny_llama, tmp_path):
    from llm_ner.inference.engine import NERModel

    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--train", str(ROOT / "examples/pii/train.jsonl"),
                            "--set", "data.dev=null", "--set", f"data.test={ROOT / 'examples/pii/test.jsonl'}",
                            "--set", f"data.label_schema={ROOT / 'examples/pii/schema.yaml'}", "--max-steps", "2",
                            "--output", str(tmp_path / "pii"), "--no-progress"])
    assert r.exit_code == 0, r.output
    ner = NERModel.from_pretrained(tmp_path / "pii" / "model")
    assert ner.labels.types == ("ADDRESS", "EMAIL", "ID", "NAME", "PHONE")
    assert ner.labels.descriptions["EMAIL"] == "an e-mail address"
    for text in ["", "😀🙈🎉", "ᚠᛇᚻ ꙮ 𓀀", "Mail jo@example.com ☎ 555-0100"]:
        for e in ner(text).entities[0]:
            assert text[e.start : e.end] == e.text
