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


def ner_config(labels, backbone: str, mode: str = "full", **keys):
    """The saved-model config a training run would build (NERConfig.from_run), from short keys: any field of the
    model / loss / LoRA sections by its name (`crf=False`, `label_smoothing=0.2`, `lora_r=4`) or a dotted key."""
    from llm_ner.config import LoraConfig, LossConfig, ModelConfig, NERConfig, load_config

    over = {"model.backbone": backbone, "training.mode": mode}
    for k, v in keys.items():
        if "." in k:
            over[k] = v
        elif k in ModelConfig.model_fields:
            over[f"model.{k}"] = v
        elif k in LossConfig.model_fields:
            over[f"loss.{k}"] = v
        elif k.startswith("lora_") and k[5:] in LoraConfig.model_fields:
            over[f"training.lora.{k[5:]}"] = v
        else:
            raise KeyError(k)
    return NERConfig.from_run(load_config(None, over), labels.to_dict() if hasattr(labels, "to_dict") else labels)


def make_gemma3(path: Path, layers: int = 4, sliding_window: int = 3, seed: int = 0) -> Path:
    """A tiny Gemma 3 text model: sliding-window attention in every layer but the last, which is global."""
    import torch
    from transformers import Gemma3TextConfig, Gemma3TextModel

    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                           sliding_window=sliding_window, pad_token_id=tok.pad_token_id,
                           layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"])
    Gemma3TextModel(cfg).save_pretrained(path)
    return path
