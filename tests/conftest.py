import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach for the hub


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tiny import make_llama

    return make_llama(tmp_path_factory.mktemp("tiny_llama"), layers=4)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama):
    from llm_ner.predict import load_tokenizer

    return load_tokenizer(str(tiny_llama))


@pytest.fixture(scope="session")
def tiny_ner_dir(tiny_llama, tiny_tokenizer, tmp_path_factory) -> Path:
    """A saved, servable model dir: frozen tiny backbone, head weights scaled up so it predicts some entities."""
    import torch
    from tiny import ner_config

    from llm_ner.labels import LabelSet
    from llm_ner.model import LLMForTokenClassification

    torch.manual_seed(0)
    model = LLMForTokenClassification.from_backbone(
        ner_config(LabelSet.from_types(["PER", "LOC", "ORG"]), str(tiny_llama), mode="frozen"))
    with torch.no_grad():
        model.classifier.weight.normal_(std=2.0)
    d = tmp_path_factory.mktemp("served") / "model"
    model.save_pretrained(d, tokenizer=tiny_tokenizer)
    return d
