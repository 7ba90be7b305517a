"""Adaptation: continued pre-training of a backbone on unlabelled text, before any label (`llm-ner adapt`).

An unmasked decoder was never trained to use the attention we give it; an encoder arrives bidirectional. LLM2Vec
(BehnamGhader et al. 2024, McGill-NLP/llm2vec `experiments/run_mntp.py`) adapts the unmasked decoder with masked
next-token prediction (MNTP) on plain text, and reports that this step is what makes its token representations work.
With few labels that is the step a user can afford: text is free, labels are not.

    pool text ──> tokens of each text, joined, cut into chunks of max_length (the last `heldout_chunks` kept out)
              ──> mask_ratio of the tokens masked (80 % mask token, 10 % random, 10 % kept: HF's MLM collator)
              ──> the backbone through LLMForTokenClassification.encode: the same unmasking hooks (and Gemma's
                  windows) that fine-tuning uses, so what is adapted is what is later fine-tuned
              ──> at the masked positions only, the hidden state times the LM head's weights (tied models: the
                  input embeddings; a 262k-word head over every position would cost more than the model)
                  MNTP (decoder): the state at i-1 predicts token i; MLM (encoder): the state at i predicts token i
              ──> cross-entropy; HF Trainer: AdamW, warm-up + linear decay, bf16 autocast, checkpoints, resume
              ──> OUTPUT/: the backbone as transformers saves it, its tokenizer, and llm_ner_adapt.json (the record:
                  tokens seen, minutes, the loss curve, the held-out loss before and after, the pool's hash)

OUTPUT is a backbone like any other: `llm-ner train --model OUTPUT` (its base's recipe applies, config.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorForLanguageModeling, TrainerCallback, TrainingArguments, set_seed

from .. import rundir as R
from ..config import ADAPT_RECORD, AdaptConfig, ModelConfig, NERConfig, adapted_from
from ..data import load_corpus
from ..data.formats import read_texts
from ..errors import UserError
from ..fsutil import atomic_write_text
from ..inference.engine import load_tokenizer
from ..labels import LabelSet
from ..modeling import backbones
from ..modeling.model import LLMForTokenClassification
from .train import TrainableOnlyTrainer, check_output_dir, last_complete_checkpoint, mixed_precision

log = logging.getLogger(__name__)

PROGRESS = "adapt_progress.json"  # what a resumed run must know: the held-out loss before, the seconds so far


class AdaptError(UserError, RuntimeError):
    """A pool too small for the budget, an output dir that holds something else."""


# ---------------------------------------------------------------------------------------------------------------------
# the text


def pool_texts(pool: str, fmt: str = "auto") -> list[str]:
    """The pool's texts in order: a bundled split's documents (its words only), or any file `predict` reads."""
    if ":" in pool and not Path(pool).exists():
        sents = load_corpus(pool)  # a bundled split: its tags are never read below
    else:
        kind, items = read_texts(pool, fmt)
        if kind == "text":
            return [t for t in items if t.strip()]
        sents = items
    texts: list[str] = []
    last_doc: object = object()
    for s in sents:  # consecutive sentences of one document make one text, each on its own line
        if s.doc_id is not None and s.doc_id == last_doc and texts:
            texts[-1] += "\n" + " ".join(s.tokens)
        else:
            texts.append(" ".join(s.tokens))
        last_doc = s.doc_id
    return [t for t in texts if t.strip()]


def pool_hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def make_chunks(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Every text's tokens, joined in order and cut into chunks of max_length framed by the tokenizer's own special
    tokens (Gemma: <bos> first; BERT: [CLS] ... [SEP]), as prediction frames a window. The last, shorter piece is
    dropped."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    at = next(i for i in range(len(full)) if full[i:i + len(bare)] == bare)
    head, tail = full[:at], full[at + len(bare):]
    body = max_length - len(head) - len(tail)
    stream: list[int] = []
    sep = tokenizer("\n", add_special_tokens=False)["input_ids"]
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + sep)
    return [head + stream[i:i + body] + tail for i in range(0, len(stream) - body + 1, body)]


# ---------------------------------------------------------------------------------------------------------------------
# the model


class MaskedTokenModel(nn.Module):
    """The backbone (inside an LLMForTokenClassification, for its attention hooks) and the LM head's weights, scoring
    only the masked positions."""

    def __init__(self, ner: LLMForTokenClassification, head: torch.Tensor, shift: bool):
        super().__init__()
        self.ner = ner
        self.ner.classifier.requires_grad_(False)  # the tagger's head: not part of this objective
        self.shift = shift  # MNTP: position i-1 predicts token i
        self._head = [head]  # not a submodule: a tied head is the input embedding itself, saved once with it
        self.softcap = getattr(ner.backbone.config, "final_logit_softcapping", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> dict:
        h = self.ner.encode(input_ids, attention_mask)  # (B,T,H)
        if self.shift:
            h, labels = h[:, :-1], labels[:, 1:]
        picked = labels != -100  # (B,T) the masked positions
        logits = h[picked] @ self._head[0].T  # (N,V)
        if self.softcap:  # Gemma 2-style final logit soft-capping, as the model's own LM head applies it
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return {"loss": F.cross_entropy(logits.float(), labels[picked])}


def lm_head_weight(backbone: nn.Module, path: str) -> torch.Tensor:
    """The LM head's (V,H) weights: the input embeddings when tied (Gemma, SmolLM2, Qwen2.5 small, EmbeddingGemma,
    BERT), else `lm_head.weight` read from the checkpoint files (AutoModel drops it)."""
    emb = backbone.get_input_embeddings().weight
    if getattr(backbone.config, "tie_word_embeddings", True):
        return emb
    from safetensors import safe_open

    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            if "lm_head.weight" in st.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return st.get_tensor("lm_head.weight").to(emb.dtype).requires_grad_(False)
    log.warning("%s: untied and no lm_head.weight found; scoring with the input embeddings", path)
    return emb


def build(cfg: AdaptConfig) -> tuple[MaskedTokenModel, bool]:
    """The model to adapt and whether it is an encoder."""
    model_cfg = ModelConfig(backbone=cfg.backbone, gguf_file=cfg.gguf_file, unmask=cfg.unmask, crf=False,
                            attn_implementation=cfg.attn_implementation, train_embeddings=cfg.train_embeddings)
    ner = LLMForTokenClassification.from_backbone(
        NERConfig(labels=LabelSet.from_types(["X"]).to_dict(), model=model_cfg, mode="full"))
    encoder = backbones.is_encoder(cfg.backbone, ner.backbone.config)
    objective = cfg.objective if cfg.objective != "auto" else ("mlm" if encoder else "mntp")
    path, _ = backbones.resolve(cfg.backbone, cfg.gguf_file)
    return MaskedTokenModel(ner, lm_head_weight(ner.backbone, path), shift=objective == "mntp"), encoder


def masking_collator(tokenizer, ratio: float) -> DataCollatorForLanguageModeling:
    if tokenizer.mask_token is None:  # Llama-style vocabularies have none; LLM2Vec masks them with "_"
        tokenizer.mask_token = "_"
    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=ratio, return_tensors="pt")


# ---------------------------------------------------------------------------------------------------------------------
# the run


@torch.no_grad()
def heldout_loss(model: MaskedTokenModel, batches: list[dict], precision: str | None) -> float:
    """Mean masked-token loss over fixed batches (the same masks before and after adaptation)."""
    model.eval()
    total = 0.0
    device = next(model.parameters()).device
    with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
        for b in batches:
            total += float(model(**{k: v.to(device) for k, v in b.items()})["loss"])
    model.train()
    return total / len(batches)


def fixed_batches(chunks: list[list[int]], collator, batch_size: int, seed: int) -> list[dict]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return [collator([{"input_ids": c} for c in chunks[i:i + batch_size]])
                for i in range(0, len(chunks), batch_size)]


class Budget(TrainerCallback):
    """Stops at the minutes budget (counted over resumes) and writes the seconds so far with each checkpoint."""

    def __init__(self, progress: Path, state: dict, minutes: float | None):
        self.progress, self.state, self.minutes = progress, state, minutes
        self.t0 = time.time()
        self.stopped_by_time = False

    def seconds(self) -> float:
        return self.state.get("seconds", 0.0) + time.time() - self.t0

    def on_step_end(self, args, state, control, **kwargs):
        if self.minutes is not None and self.seconds() >= self.minutes * 60:
            self.stopped_by_time = control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        atomic_write_text(self.progress, json.dumps({**self.state, "seconds": self.seconds()}))


def plan_steps(cfg: AdaptConfig, n_chunks: int) -> int:
    per_step = cfg.batch_size * cfg.grad_accum
    if cfg.max_steps > 0:
        return cfg.max_steps
    if cfg.max_tokens is not None:
        return max(1, math.ceil(cfg.max_tokens / (per_step * cfg.max_length)))
    return max(1, n_chunks // per_step)  # the pool once


def prepare_output(out: Path, resume: bool) -> str | None:
    """The checkpoint to resume from; a fresh run refuses a dir that holds anything (an adapted backbone, a run)."""
    if resume:
        last = last_complete_checkpoint(out / R.CHECKPOINTS, move_aside=True)
        if last is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", out / R.CHECKPOINTS)
        return last
    if out.exists() and any(out.iterdir()):
        raise AdaptError(f"{out} is not empty: give another --output, or --resume to continue an adaptation there")
    return None


def adapt(cfg: AdaptConfig, resume: bool = False, progress: bool = True) -> dict:
    """Adapt cfg.backbone on cfg.pool; returns the record written to OUTPUT/llm_ner_adapt.json."""
    out = Path(cfg.output)
    last = prepare_output(out, resume)
    check_output_dir(out, 3 * 2**30)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    texts = pool_texts(cfg.pool, cfg.pool_format)
    tokenizer = load_tokenizer(cfg.backbone, cfg.gguf_file)
    chunks = make_chunks(tokenizer, texts, cfg.max_length)
    if len(chunks) < 2 * cfg.heldout_chunks:
        raise AdaptError(f"{cfg.pool}: {len(chunks)} chunks of {cfg.max_length} tokens; adaptation needs at least "
                         f"{2 * cfg.heldout_chunks} (the last {cfg.heldout_chunks} are held out)")
    train_chunks, held = chunks[:-cfg.heldout_chunks], chunks[-cfg.heldout_chunks:]
    model, encoder = build(cfg)
    collator = masking_collator(tokenizer, cfg.mask_ratio)
    precision = mixed_precision(cfg)
    held_batches = fixed_batches(held, collator, cfg.batch_size, cfg.seed)
    progress_file = out / PROGRESS
    state = json.loads(progress_file.read_text()) if last and progress_file.is_file() else {}
    if "heldout_before" not in state:
        state["heldout_before"] = heldout_loss(model, held_batches, precision)
    steps = plan_steps(cfg, len(train_chunks))
    budget = Budget(progress_file, state, cfg.minutes)
    trainer = TrainableOnlyTrainer(
        model=model, args=adapt_arguments(cfg, out, steps, precision, progress),
        train_dataset=[{"input_ids": c} for c in train_chunks], data_collator=collator, callbacks=[budget])
    trainer.train(resume_from_checkpoint=last)
    record = {
        "backbone": cfg.backbone, "adapted_from": adapted_from(cfg.backbone), "encoder": encoder,
        "objective": "mntp" if model.shift else "mlm", "pool": cfg.pool, "pool_sha256": pool_hash(texts),
        "pool_texts": len(texts), "steps": trainer.state.global_step, "planned_steps": steps,
        "tokens_seen": trainer.state.global_step * cfg.batch_size * cfg.grad_accum * cfg.max_length,
        "minutes": round(budget.seconds() / 60, 2), "stopped_by": "minutes" if budget.stopped_by_time else "steps",
        "heldout_loss_before": round(state["heldout_before"], 4),
        "heldout_loss_after": round(heldout_loss(model, held_batches, precision), 4),
        "loss_curve": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "precision": precision or "fp32", "config": cfg.model_dump(),
    }
    save_adapted(model, tokenizer, out, record)
    return record


def adapt_arguments(cfg: AdaptConfig, out: Path, steps: int, precision: str | None, progress: bool):
    return TrainingArguments(
        output_dir=str(out / R.CHECKPOINTS), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        max_steps=steps, lr_scheduler_type="linear", warmup_steps=cfg.warmup_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, logging_steps=cfg.logging_steps,
        logging_first_step=True, seed=cfg.seed, data_seed=cfg.seed, bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(), report_to=[], disable_tqdm=not progress,
        remove_unused_columns=False, dataloader_num_workers=0)


def save_adapted(model: MaskedTokenModel, tokenizer, out: Path, record: dict) -> None:
    """The backbone and tokenizer as transformers saves them; the record last (its presence = a finished run)."""
    model.ner.backbone.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for leftover in (R.CHECKPOINTS, R.INCOMPLETE):  # a finished run keeps no checkpoint (they are GBs)
        shutil.rmtree(out / leftover, ignore_errors=True)
    (out / PROGRESS).unlink(missing_ok=True)
    atomic_write_text(out / ADAPT_RECORD, json.dumps(record, indent=1) + "\n")


def adapted_backbone(backbone: str, pool: str, root: Path, progress: bool = True) -> str:
    """`compare --adapt` / `learning-curve --adapt`: the backbone adapted on `pool` (the run's training text) with
    the default budget, in root/adapted/NAME — adapted once and reused by every run (resumed if interrupted)."""
    out = Path(root) / "adapted" / Path(backbone).name
    record = out / ADAPT_RECORD
    if record.is_file():
        done = json.loads(record.read_text())
        if (done.get("backbone"), done.get("pool")) != (backbone, pool):
            raise AdaptError(f"{out} holds {done.get('backbone')} adapted on {done.get('pool')}, not {backbone} on "
                             f"{pool}: give another output dir")
        return str(out)
    adapt(AdaptConfig(backbone=backbone, pool=pool, output=str(out)), resume=out.exists(), progress=progress)
    return str(out)
