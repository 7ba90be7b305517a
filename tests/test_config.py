"""The one schema: run config -> saved model config -> loaded back; version 1 model dirs; where dev/test sets come
from; bundled config names."""

import json

import pytest
import torch
from tiny import ner_config

from llm_ner.config import ConfigError, NERConfig, RunConfig, config_path, load_config
from llm_ner.labels import LabelSet
from llm_ner.modeling.model import LLMForTokenClassification

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


LABELS = LabelSet.from_types(["PER", "LOC"])


def test_dev_and_test_come_from_the_users_data():
    default = load_config()
    assert (default.data.dev, default.data.test) == ("conll2003:valid", "conll2003:test")
    wnut = load_config(None, {"data.train": "wnut17:train"})
    assert (wnut.data.dev, wnut.data.test) == ("wnut17:valid", "wnut17:test")
    own = load_config(None, {"data.train": "bio.conll", "data.dev": "bio_dev.conll"})
    assert (own.data.dev, own.data.test) == ("bio_dev.conll", None)  # no test set unless the user gives one
    explicit = load_config(None, {"data.test": None})
    assert explicit.data.test is None and explicit.data.dev == "conll2003:valid"
    # the saved config.yaml reloads to the same splits
    assert RunConfig.model_validate(own.model_dump()).data.test is None


def test_bundled_config_names_and_unknown_ones():
    assert config_path("quickstart").name == "quickstart.yaml"
    assert load_config("quickstart").data.max_train_sentences == 2000
    with pytest.raises(ConfigError, match=r"config file not found \(bundled configs: .*quickstart"):
        load_config("no-such-config")
    for path in config_path("quickstart").parent.glob("*.yaml"):  # every bundled config validates
        assert load_config(path.stem).output, path


def test_saved_config_is_the_run_configs_sections():
    cfg = load_config(None, {"model.crf": False, "loss.label_smoothing": 0.1, "training.mode": "lora",
                             "training.lora.r": 4})
    saved = NERConfig.from_run(cfg, LABELS.to_dict())
    assert saved.model == cfg.model and saved.loss == cfg.loss and saved.lora == cfg.training.lora
    assert saved.mode == "lora"
    back = NERConfig.from_dict(json.loads(saved.to_json()))
    assert back == saved and "use_cache" not in json.loads(saved.to_json())


# What llm-ner 0.1 wrote (format version 1): flat, other field names, LoRA as its default mode.
V1 = {"labels": LABELS.to_dict(), "backbone": "BACKBONE", "gguf_file": None, "unmask": "all", "head_layers": [-1],
      "head_dropout": 0.1, "use_crf": False, "ce_weight": 1.0, "crf_weight": 0.5, "label_smoothing": 0.1,
      "label_all_subtokens": False, "mode": "full", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
      "lora_targets": ["q_proj", "v_proj"], "max_length": 128, "stride": 16, "attn_implementation": "sdpa",
      "trust_remote_code": False, "backbone_saved": "full", "format_version": 1}


def test_version_1_config_reads_into_the_new_schema():
    cfg = NERConfig.from_dict(V1)
    assert cfg.format_version == 2 and cfg.model.crf is False and cfg.model.max_length == 128
    assert cfg.loss.crf_weight == 0.5 and cfg.lora.r == 8 and cfg.lora.targets == ["q_proj", "v_proj"]
    assert cfg.mode == "full" and cfg.backbone_saved == "full"
    with pytest.raises(ConfigError, match="unknown field 'bogus'"):
        NERConfig.from_dict({**V1, "bogus": 1})
    with pytest.raises(ConfigError, match="newer llm-ner"):
        NERConfig.from_dict({**V1, "format_version": 99})


def test_a_version_1_model_dir_still_loads(tiny_llama, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = LLMForTokenClassification.from_backbone(ner_config(LABELS, str(tiny_llama), crf=False)).eval()
    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    (tmp_path / "m" / "llm_ner_config.json").write_text(json.dumps({**V1, "backbone": str(tiny_llama)}))
    loaded = LLMForTokenClassification.from_pretrained(tmp_path / "m")
    assert loaded.config.format_version == 2 and loaded.crf is None
    ids = torch.tensor([[5, 6, 7, 8]])
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), word_positions=torch.tensor([[0, 2]]),
                 word_mask=torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(model(**batch).logits, loaded(**batch).logits)


def test_a_backbones_recipe_applies_under_the_command_line(tmp_path):
    """recipes: the entry of the run's backbone over the file's values, under --set; another backbone's is ignored."""
    from llm_ner.baselines.encoder import encoder_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {backbone: dec}\ntraining: {learning_rate: 2.0e-4}\nrecipes:\n"
                   "  enc: {training.learning_rate: 5.0e-5, training.batch_size: 4}\n"
                   "  embeddinggemma-300m: {training.learning_rate: 1.0e-3}\n")
    assert load_config(cfg).training.learning_rate == 2e-4  # the file's backbone has no recipe
    c = load_config(cfg, {"model.backbone": "enc"})
    assert (c.training.learning_rate, c.training.batch_size) == (5e-5, 4)
    assert load_config(cfg, {"model.backbone": "enc", "training.learning_rate": 1e-5}).training.learning_rate == 1e-5
    assert encoder_config(str(cfg), {}).training.learning_rate == 1e-3  # the encoder baseline's: EmbeddingGemma
    assert encoder_config(str(cfg), {"model.backbone": "enc"}).training.batch_size == 4
    cfg.write_text("recipes:\n  enc: {training.learnin_rate: 1}\n")
    with pytest.raises(ConfigError, match="learnin_rate"):
        load_config(cfg, {"model.backbone": "enc"})
    cfg.write_text("recipes: [1]\n")
    with pytest.raises(ConfigError, match="recipes"):
        load_config(cfg)
