"""Training: RunConfig -> data -> model -> HF Trainer -> best model on dev entity F1 -> test metrics.

Why the HF Trainer: checkpoint/resume (optimizer, scheduler, RNG, data position), gradient accumulation,
length-grouped batches, bf16/fp16, and `accelerate launch` / `torchrun` all come for free. Two things are ours:
  * `evaluate()` runs real decoding (CRF Viterbi, window merging) and scores with seqeval, not a logits loss;
    the best dev-F1 model is saved to run_dir/model and training stops early after `patience` evaluations
    without improvement.
  * `_save()` writes only the trainable tensors to a checkpoint (LoRA/head/CRF: a few MB instead of 540 MB);
    the Trainer reloads checkpoints with strict=False, so resume restores exactly those.

Run dir: config.yaml, checkpoints/, model/ (best), metrics.jsonl, test_metrics.json, test_predictions.conll.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import resource
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .align import collate, encode_sentences, window_feature
from .analyze import analyze
from .config import RunConfig, dump_config
from .data import DataError, Sentence, atomic_write_text, entity_types, load_corpus, remap, replace_dir, stats
from .evaluate import evaluate_model, format_table
from .labels import LabelSet
from .model import LLMForTokenClassification, NERConfig
from .predict import NERModel, load_tokenizer

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    pass


def load_split(cfg: RunConfig, which: str) -> list[Sentence] | None:
    d = cfg.data
    src = getattr(d, which)
    if src is None:
        return None
    limit = {"train": d.max_train_sentences, "dev": d.max_dev_sentences, "test": d.max_test_sentences}[which]
    sents = load_corpus(src, d.format, d.scheme, d.strict, limit)
    if d.keep_types is not None or d.rename:
        sents = remap(sents, d.keep_types, d.rename)
    return sents


def label_set(cfg: RunConfig, train_s: list[Sentence]) -> LabelSet:
    """The model's labels: the schema file's types if one is given (every training type must be in it), else the
    types found in the training data."""
    if cfg.data.label_schema:
        labels = LabelSet.load(cfg.data.label_schema)
        extra = set(entity_types(train_s)) - set(labels.types)
        if extra:
            raise DataError(f"{cfg.data.train}: types {sorted(extra)} are not in the schema {cfg.data.label_schema}")
    else:
        labels = LabelSet.from_types(entity_types(train_s))
    if not labels.types:
        raise DataError(f"{cfg.data.train}: no entities in the training data")
    return labels


def check_output_dir(path: Path, need_bytes: int) -> None:
    """Fail before training, not after an hour, if the run dir is unwritable or the disk too full."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"  # per process: DDP ranks probe the same dir at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"output dir {path} is not writable ({e.strerror})") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise TrainError(f"output dir {path}: only {free / 2**20:.0f} MiB free, this run needs about "
                         f"{need_bytes / 2**20:.0f} MiB (checkpoints + model)")


def _is_disk_full(e: BaseException | None, path: Path) -> bool:
    """Whether an error from a save is the disk filling up. Each writer says it differently: OSError(ENOSPC) from
    Python, SafetensorError "No space left on device (os error 28)" from safetensors, a RuntimeError from torch.save."""
    while e is not None:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
                m in str(e) for m in ("No space left on device", "os error 28", "Disk quota exceeded")):
            return True
        e = e.__cause__ or e.__context__
    try:
        return shutil.disk_usage(path).free < 16 * 2**20
    except OSError:
        return False


@contextmanager
def disk_full_is_a_train_error(run_dir: Path):
    """The free-space probe runs before training, but a disk can still fill during it (other jobs, big checkpoints):
    say so in one line instead of a traceback from deep inside a saver. Nothing is lost: saves are atomic or land in
    a checkpoint without trainer_state.json, which --resume moves aside."""
    try:
        yield
    except Exception as e:
        if not _is_disk_full(e, run_dir):
            raise
        free = shutil.disk_usage(run_dir).free / 2**20 if run_dir.exists() else 0.0
        raise TrainError(f"disk full while saving to {run_dir} ({free:.0f} MiB free): free some space, then rerun "
                         "with --resume to continue from the last complete checkpoint") from None


def checkpoint_step(path: str | Path) -> int:
    return int(Path(path).name.split("-")[-1])  # "checkpoint-250" -> 250


def last_complete_checkpoint(ckpt_dir: Path, move_aside: bool = True) -> str | None:
    """The newest checkpoint the Trainer finished writing. It writes trainer_state.json last, so a checkpoint
    without a readable one was interrupted (e.g. killed mid-save): it is moved aside, never resumed from."""
    if not ckpt_dir.is_dir():
        return None
    cands = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=checkpoint_step, reverse=True)
    for p in cands:
        try:
            json.loads((p / "trainer_state.json").read_text())
            return str(p)
        except (OSError, json.JSONDecodeError):
            log.warning("%s is incomplete (interrupted while saving); moving it aside", p)
            if not move_aside:  # another process (DDP rank 0) does the moving
                continue
            shutil.rmtree(ckpt_dir.parent / "incomplete_checkpoints" / p.name, ignore_errors=True)
            (ckpt_dir.parent / "incomplete_checkpoints").mkdir(exist_ok=True)
            p.rename(ckpt_dir.parent / "incomplete_checkpoints" / p.name)
    return None


def build_model(cfg: RunConfig, labels: LabelSet) -> LLMForTokenClassification:
    m, t, lo = cfg.model, cfg.training, cfg.loss
    ner_cfg = NERConfig(
        labels=labels.to_dict(), backbone=m.backbone, gguf_file=m.gguf_file, unmask=m.unmask,
        head_layers=m.head_layers, head_dropout=m.head_dropout, use_crf=m.crf, ce_weight=lo.ce_weight,
        crf_weight=lo.crf_weight, label_smoothing=lo.label_smoothing, label_all_subtokens=m.label_all_subtokens,
        mode=t.mode, lora_r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
        lora_targets=t.lora.targets, max_length=m.max_length, stride=m.stride,
        attn_implementation=m.attn_implementation, trust_remote_code=m.trust_remote_code,
    )
    dtype = None
    if torch.cuda.is_available() and t.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16 if t.mode != "full" else None  # full FT: fp32 master weights + bf16 autocast
    return LLMForTokenClassification.from_backbone(ner_cfg, dtype=dtype)


class MetricsLogger(TrainerCallback):
    """Appends every log record (train loss, lr, dev metrics) to metrics.jsonl: the training curves."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            rec = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


class NERTrainer(Trainer):
    def __init__(self, *args, dev: list[Sentence] | None, ner_tokenizer, run_dir: Path, patience: int | None,
                 eval_batch_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.dev = dev
        self.ner_tokenizer = ner_tokenizer
        self.run_dir = run_dir
        self.patience = patience
        self.eval_batch_size = eval_batch_size
        best = run_dir / "model" / "best.json"  # survives a kill: resume knows the best so far
        state = json.loads(best.read_text()) if best.is_file() else {}
        self.best_f1 = state.get("f1", -1.0)
        self.bad_evals = state.get("bad_evals", 0)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        if not self.dev:
            return {}
        model = self.model
        t0 = time.time()
        m, _ = evaluate_model(NERModel(model, self.ner_tokenizer, batch_size=self.eval_batch_size), self.dev)
        model.train()
        metrics = {f"{metric_key_prefix}_{k}": round(m[k], 4) for k in ("f1", "precision", "recall", "macro_f1",
                                                                          "accuracy")}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - t0, 2)
        improved = m["f1"] > self.best_f1
        if improved:
            self.best_f1, self.bad_evals = m["f1"], 0
        else:
            self.bad_evals += 1
        if self.args.should_save:
            if improved:  # write aside, then swap: a kill mid-save never leaves a half-written model/
                tmp = self.run_dir / "model.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                model.save_pretrained(tmp, tokenizer=self.ner_tokenizer)
                replace_dir(tmp, self.run_dir / "model")
            atomic_write_text(self.run_dir / "model" / "best.json", json.dumps(
                {"f1": self.best_f1, "bad_evals": self.bad_evals, "step": self.state.global_step}))
        if self.patience is not None and self.bad_evals >= self.patience:
            log.info("early stopping: dev F1 has not improved for %d evaluations", self.bad_evals)
            self.control.should_training_stop = True
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _issue_warnings_after_load(self, load_result) -> None:
        # Checkpoints hold only what trains (LoRA/head, see _save) and our buffers: the frozen backbone is missing by
        # design. (The base method also reads PreTrainedModel attributes this nn.Module lacks: resuming a LoRA run
        # raised AttributeError.) Anything else missing or extra means the run's config changed since the checkpoint.
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        missing = [k for k in load_result.missing_keys if k in trainable]
        if missing or load_result.unexpected_keys:
            raise TrainError(f"the checkpoint does not match this run's model (config changed since?): missing "
                             f"{missing[:3]}, unexpected {load_result.unexpected_keys[:3]}")

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach().cpu().contiguous() for n, b in self.model.named_buffers()
                   if not n.startswith("backbone.")}
        save_file({**trainable, **buffers}, str(out / "model.safetensors"), metadata={"format": "pt"})
        torch.save(self.args, out / "training_args.bin")


def make_optimizer(model: LLMForTokenClassification, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW with two learning rates: small for the (pre-trained) backbone / adapters, large for the fresh head."""
    t = cfg.training
    groups: dict[str, list] = {"bb_decay": [], "bb_nodecay": [], "head": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not n.startswith("backbone."):
            groups["head"].append(p)
        elif p.ndim < 2:  # norms and biases
            groups["bb_nodecay"].append(p)
        else:
            groups["bb_decay"].append(p)
    params = [
        {"params": groups["bb_decay"], "lr": t.learning_rate, "weight_decay": t.weight_decay},
        {"params": groups["bb_nodecay"], "lr": t.learning_rate, "weight_decay": 0.0},
        {"params": groups["head"], "lr": t.head_learning_rate, "weight_decay": 0.0},
    ]
    # fused: one kernel over all tensors; on CPU ~8x faster than the default for-each step (0.08 s vs 0.6 s for
    # SmolLM2-135M, measured), which otherwise dominates full fine-tuning at small batch sizes.
    return torch.optim.AdamW([g for g in params if g["params"]], lr=t.learning_rate, fused=True)


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, callbacks: list | None = None) -> dict:
    """Train, keep the best dev model, evaluate it on test. Returns a summary dict (also written to run_dir)."""
    t = cfg.training
    run_dir = Path(cfg.output)
    if t.threads:
        torch.set_num_threads(t.threads)
    set_seed(t.seed)

    # ---- data and labels ----
    train_s = load_split(cfg, "train")
    dev_s = load_split(cfg, "dev")
    test_s = load_split(cfg, "test")
    labels = label_set(cfg, train_s)
    log.info("labels: %s", labels.tags)

    # Under torchrun every rank runs this function: only rank 0 touches the run dir's files (two ranks renaming the
    # same temp file was a real CI failure); the others only train and return after the last evaluation.
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    check_output_dir(run_dir, need_bytes=(1200 if t.mode == "full" else 300) * 2**20)
    ckpt_dir = run_dir / "checkpoints"
    last = last_complete_checkpoint(ckpt_dir, move_aside=main) if resume else None
    for leftover in ("model.tmp", "model.old") if main else ():  # debris of a save that was killed half-way
        shutil.rmtree(run_dir / leftover, ignore_errors=True)
    if resume and last is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", ckpt_dir)
    if main and last is not None and (run_dir / "metrics.jsonl").is_file():
        # Steps after the checkpoint are redone: drop their old records so each step is logged once.
        step = checkpoint_step(last)
        keep = [ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step]
        atomic_write_text(run_dir / "metrics.jsonl", "".join(x + "\n" for x in keep))
    if main and not resume:  # a fresh run never mixes with an old one's files
        for name in ("metrics.jsonl", "model", "checkpoints", "incomplete_checkpoints"):
            p = run_dir / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if main:
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))

    # ---- model and features ----
    tokenizer = load_tokenizer(cfg.model.backbone, cfg.model.gguf_file)
    model = build_model(cfg, labels)
    tag2id = labels.tag2id
    windows = encode_sentences(tokenizer, train_s, labels.encode, cfg.model.max_length, cfg.model.stride)
    cont = [tag2id.get("I-" + tg[2:], i) if tg.startswith("B-") else i for i, tg in enumerate(labels.tags)]
    features = [window_feature(w, cont if cfg.model.label_all_subtokens else None) for w in windows]
    if cfg.loss.class_weights == "balanced":
        counts = Counter(lab for f in features for lab in f["labels"])
        total = sum(counts.values())
        w = [min(10.0, total / (len(labels) * counts[i])) if counts[i] else 1.0 for i in range(len(labels))]
        model.ce_weights.copy_(torch.tensor(w))
    n_params = model.parameter_counts()
    n_tokens = sum(len(f["input_ids"]) for f in features)
    log.info("train: %d sentences -> %d windows, %d tokens; params %s", len(train_s), len(features), n_tokens,
             n_params)

    # ---- trainer ----
    steps_per_epoch = math.ceil(len(features) / (t.batch_size * t.grad_accum))
    eval_steps = t.eval_steps or steps_per_epoch
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and t.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        eval_strategy="steps" if dev_s else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps or eval_steps,
        save_total_limit=2,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        train_sampling_strategy="group_by_length",
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,
        fp16=on_gpu and t.precision == "fp16",
        use_cpu=not on_gpu,
        report_to=[],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_only_model=False,
    )
    trainer = NERTrainer(
        model=model, args=args, train_dataset=features, eval_dataset=features[:1] if dev_s else None,
        data_collator=lambda b: collate(b, tokenizer.pad_token_id), optimizers=(make_optimizer(model, cfg), None),
        callbacks=[MetricsLogger(run_dir / "metrics.jsonl"), *(callbacks or [])],
        dev=dev_s, ner_tokenizer=tokenizer, run_dir=run_dir,
        patience=t.early_stopping_patience, eval_batch_size=t.eval_batch_size,
    )
    t0 = time.time()
    with disk_full_is_a_train_error(run_dir):
        result = trainer.train(resume_from_checkpoint=last)
        train_time = time.time() - t0
        # The last steps may not have been evaluated: do it now so the best model reflects all training.
        if dev_s and trainer.state.global_step % eval_steps != 0:
            trainer.evaluate()
    trainer_epochs = trainer.state.epoch or 0.0
    if not main:
        return {"global_step": trainer.state.global_step, "rank": rank}
    if not dev_s:  # nothing to select on: the final model is the model
        model.save_pretrained(run_dir / "model", tokenizer=tokenizer)

    # ---- test ----
    summary = {
        "train_sentences": len(train_s), "train_tokens_per_epoch": n_tokens, "labels": labels.tags,
        "parameters": n_params, "train_seconds": round(train_time, 1), "global_step": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "best_dev_f1": round(float(trainer.best_f1), 2) if dev_s else None,
        "data": {k: stats(v) for k, v in (("train", train_s), ("dev", dev_s), ("test", test_s)) if v},
        "device": "cuda:" + torch.cuda.get_device_name(0) if on_gpu else f"cpu ({torch.get_num_threads()} threads)",
    }
    if test_s:
        del trainer, model
        ner = NERModel.from_pretrained(run_dir / "model", batch_size=t.eval_batch_size)
        t1 = time.time()
        m, pred = evaluate_model(ner, test_s, run_dir, progress=progress, name="test")
        atomic_write_text(run_dir / "analysis.json", json.dumps(analyze(test_s, pred, train_s), indent=2) + "\n")
        summary["test_seconds"] = round(time.time() - t1, 1)
        summary["test_words_per_second"] = round(m["tokens"] / max(summary["test_seconds"], 1e-9), 1)
        summary["test"] = {k: round(float(m[k]), 2) for k in ("f1", "precision", "recall", "macro_f1", "accuracy")}
        print(format_table(m, f"\nTest set ({cfg.data.test}):"))
    # Peak resident memory of this process (ru_maxrss is KiB on Linux): compare runs each system in its own process.
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    summary["train_words_per_second"] = round(
        summary["data"]["train"]["tokens"] * trainer_epochs / max(train_time, 1e-9), 1)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"\nOutputs in {run_dir.resolve()}{os.sep}: model/ (best on dev), metrics.jsonl, test_metrics.json, "
          "test_predictions.conll, analysis.json, summary.json")
    return summary
