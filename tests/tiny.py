"""Tiny randomly initialised models built in code (no downloads): a byte-level BPE tokenizer trained on a few
sentences, and Llama / BERT backbones with 2 layers and hidden size 32."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn visited New York and Washington on Monday .",
    "Apple Inc. hired John Smith from Google in London .",
    "The European Commission said on Thursday it disagreed with German advice .",
    "Email jane.doe@example.com or call 555-0100 before 2024 .",
]


def make_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(path)
    return fast


def make_llama(path: Path, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaModel

    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id)
    LlamaModel(cfg).save_pretrained(path)
    return path


def make_bert(path: Path, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                     num_attention_heads=4, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(path)
    return path
