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
