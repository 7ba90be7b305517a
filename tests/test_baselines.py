
import json

import pytest
from typer.testing import CliRunner

from llm_ner.cli import app

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


def test_encoder_baseline_trains_with_same_outputs(tmp_path):
    from tiny import make_bert

    bert = make_bert(tmp_path / "bert")
    out = tmp_path / "enc"
    r = CliRunner().invoke(app, ["baseline", "encoder", "--model", str(bert), "--output", str(out), "--max-steps",
                                 "4", "--set", "data.max_train_sentences=24", "--set", "data.max_dev_sentences=8",
                                 "--set", "data.max_test_sentences=8", "--set", "training.eval_steps=4",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "model" / "llm_ner_config.json").read_text())
    # "all" on an encoder = its own bidirectional mask, put in by our hook; it makes prediction packable
    assert cfg["model"]["unmask"] == "all" and cfg["model"]["crf"] is False and cfg["backbone_saved"] == "full"
    assert json.loads((out / "summary.json").read_text())["system"] == "encoder"  # a BERT backbone: the encoder
    from llm_ner.inference.engine import NERModel

    assert NERModel.from_pretrained(out / "model").model.packable
    m = json.loads((out / "test_metrics.json").read_text())
    assert set(m["per_type"]) == {"PER", "ORG", "LOC", "MISC"} and m["sentences"] == 8
    assert (out / "analysis.json").is_file()
