"""Training: RunConfig -> data -> model -> HF Trainer -> best model on dev entity F1 -> test metrics.

Why the HF Trainer: checkpoint/resume (optimizer, scheduler, RNG, data position), gradient accumulation,
length-grouped batches, bf16/fp16, and `accelerate launch` / `torchrun` all come for free. Two things are ours:
  * `evaluate()` runs real decoding (CRF Viterbi, window merging) and scores with seqeval, not a logits loss;
    the best dev-F1 model is saved to run_dir/model and training stops early after `patience` evaluations
    without improvement.
  * `_save()` writes only the trainable tensors to a checkpoint (LoRA/head/CRF: a few MB instead of 540 MB);
    the Trainer reloads checkpoints with strict=False, so resume restores exactly those.

`train()` reads as the pipeline: load_data -> prepare_run_dir -> build_model -> make_features -> make_trainer -> fit
-> test_step -> summary. The run dir's files are named in rundir.py.
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
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .. import rundir as R
from ..config import NERConfig, RunConfig, TrainingConfig, dump_config
from ..data import DataError, Sentence, entity_types, load_split, stats
from ..device import cpu_has_native_bf16
from ..errors import UserError
from ..evaluation.analyze import analyze
from ..evaluation.calibrate import calibrate
from ..evaluation.evaluate import evaluate_model, format_table
from ..fsutil import atomic_write_text, replace_dir
from ..inference.confidence import seen_forms
from ..inference.engine import NERModel, load_tokenizer
from ..labels import LabelSet, instruction, label_set_for
from ..modeling import backbones
from ..modeling.model import LLMForTokenClassification
from ..modeling.persistence import read_model_config
from ..modeling.processor import collate, encode_sentences, split_batch, to_tensors, window_feature
from .head_init import init_head

log = logging.getLogger(__name__)


class TrainError(UserError, RuntimeError):
    """A run that cannot start or continue (unwritable or full output dir, a checkpoint of another model)."""


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
            shutil.rmtree(ckpt_dir.parent / R.INCOMPLETE / p.name, ignore_errors=True)
            (ckpt_dir.parent / R.INCOMPLETE).mkdir(exist_ok=True)
            p.rename(ckpt_dir.parent / R.INCOMPLETE / p.name)
    return None


class MetricsLogger(TrainerCallback):
    """Appends every log record (train loss, lr, dev metrics) to metrics.jsonl: the training curves. Append-only, a
    line at a time; a line cut off by a kill is dropped on --resume (`_step`)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            rec = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


class TrainableOnlyTrainer(Trainer):
    """A Trainer whose checkpoints hold only what trains (and our buffers), not the frozen weights (training and
    adaptation, training/adapt.py, share it)."""

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
                   if ".backbone." not in f".{n}"}
        save_file({**trainable, **buffers}, str(out / "model.safetensors"), metadata={"format": "pt"})
        torch.save(self.args, out / "training_args.bin")


class NERTrainer(TrainableOnlyTrainer):
    def __init__(self, *args, dev: list[Sentence] | None, ner_tokenizer, run_dir: Path, patience: int | None,
                 eval_batch_size: int, max_tokens_per_pass: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_tokens_per_pass = max_tokens_per_pass
        self.dev = dev
        self.ner_tokenizer = ner_tokenizer
        self.run_dir = run_dir
        self.patience = patience
        self.eval_batch_size = eval_batch_size
        best = run_dir / R.MODEL / R.BEST  # survives a kill: resume knows the best so far
        state = json.loads(best.read_text()) if best.is_file() else {}
        self.best_f1 = state.get("f1", -1.0)
        self.bad_evals = state.get("bad_evals", 0)
        self.last_eval_step = -1  # fit() evaluates after training only if the Trainer has not at the last step

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One optimizer step's batch in passes of at most `max_tokens_per_pass` tokens (processor.split_batch), each
        forward + backward on its own, so activation memory is that of a pass. Each pass divides by the whole
        batch's loss denominators: the gradients add up to the one-pass gradient (up to float rounding)."""
        passes = split_batch(inputs, self.max_tokens_per_pass) if self.max_tokens_per_pass and "labels" in inputs \
            else [inputs]
        if len(passes) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        core = self.accelerator.unwrap_model(model)
        den = core.loss_denominators(inputs["word_mask"], inputs["labels"], inputs.get("token_labels"))
        return sum(super(NERTrainer, self).training_step(model, {**p, "loss_denominators": den}, num_items_in_batch)
                   for p in passes)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        if not self.dev:
            return {}
        model = self.model
        self.last_eval_step = self.state.global_step
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
                tmp = self.run_dir / f"{R.MODEL}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                model.save_pretrained(tmp, tokenizer=self.ner_tokenizer)
                replace_dir(tmp, self.run_dir / R.MODEL)
            atomic_write_text(self.run_dir / R.MODEL / R.BEST, json.dumps(
                {"f1": self.best_f1, "bad_evals": self.bad_evals, "step": self.state.global_step}))
        if self.patience is not None and self.bad_evals >= self.patience:
            log.info("early stopping: dev F1 has not improved for %d evaluations", self.bad_evals)
            self.control.should_training_stop = True
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


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




# ---------------------------------------------------------------------------------------------------------------------
# the pipeline, step by step


@dataclass
class Splits:
    train: list[Sentence]
    dev: list[Sentence] | None
    test: list[Sentence] | None
    labels: LabelSet


def mixed_precision(t: TrainingConfig) -> str | None:
    """The one precision rule. GPU: bf16 autocast if it has bf16 ("auto" or "bf16"), fp16 if asked. CPU: bf16 autocast
    (fp32 master weights) when asked and the CPU computes bf16 natively; otherwise, and for "auto", fp32."""
    if torch.cuda.is_available():
        if t.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16" if t.precision == "fp16" else None
    if t.precision == "bf16":
        if cpu_has_native_bf16():
            return "bf16"
        log.warning("training.precision=bf16: this CPU has no native bf16 instructions (emulated bf16 is slower); "
                    "training in fp32")
    if t.precision == "fp16":
        log.warning("training.precision=fp16 needs a GPU; training in fp32")
    return None


def continue_from(cfg: RunConfig) -> tuple[RunConfig, LabelSet | None]:
    """With `training.init`: the run takes the saved model's model section and its training mode with its LoRA
    settings — a LoRA model goes on as LoRA, a frozen backbone stays frozen, unless the run sets training.mode
    itself (the run's config.yaml records what was continued) — and starts from its labels. Without: the run as
    configured, no labels yet."""
    if not cfg.training.init:
        return cfg, None
    saved = read_model_config(cfg.training.init)  # a missing or broken model dir: a one-line error, before any work
    model = saved.model.model_copy(update={"trust_remote_code": cfg.model.trust_remote_code})
    if model != cfg.model:
        log.info("--init: the model section is %s's", cfg.training.init)
    training = cfg.training
    if "mode" not in training.model_fields_set:
        training = training.model_copy(update={"mode": saved.mode, "lora": saved.lora})
        log.info("--init: training mode %s, as %s was trained", saved.mode, cfg.training.init)
    return cfg.model_copy(update={"model": model, "training": training}), LabelSet.from_dict(saved.labels)


def load_data(cfg: RunConfig, start: LabelSet | None = None) -> Splits:
    """The splits and the model's labels (`start`'s, plus any type new in the training data, when a run continues a
    model). A dev/test set must share entity types with the labels: scoring a model on types it never learned
    (another corpus's test set) is refused, naming both."""
    train_s = load_split(cfg, "train")
    labels = label_set_for(train_s, cfg.data.label_schema, cfg.data.train)
    if start is not None:
        if not set(labels.types) & set(start.types):
            raise DataError(f"{cfg.data.train}: its entity types {list(labels.types)} share none with the model it "
                            f"continues ({cfg.training.init}: {list(start.types)}); train from the backbone instead "
                            "(no --init), or give data with the model's types")
        added = sorted(set(labels.types) - set(start.types))
        if added:
            log.info("--init: new entity types %s get fresh head rows", added)
        labels = LabelSet.from_types([*start.types, *added], {**start.descriptions, **labels.descriptions})
    splits = Splits(train_s, load_split(cfg, "dev"), load_split(cfg, "test"), labels)
    for which in ("dev", "test"):
        sents = getattr(splits, which)
        found = set(entity_types(sents or []))
        if found and not found & set(labels.types):
            raise DataError(f"{getattr(cfg.data, which)}: its entity types {sorted(found)} do not overlap the model's "
                            f"labels {list(labels.types)} (from {cfg.data.label_schema or cfg.data.train}); give "
                            f"--{which} with data of the same types, or --set data.{which}=null")
        if found - set(labels.types):
            log.warning("%s: types %s are not in the model's labels; they count as missed", getattr(cfg.data, which),
                        sorted(found - set(labels.types)))
    log.info("labels: %s", labels.tags)
    return splits


def _step(record: str) -> float:
    """The step of a metrics.jsonl line; a line cut off by a kill (or empty) counts as never logged."""
    try:
        return json.loads(record).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return float("inf")


def prepare_run_dir(cfg: RunConfig, resume: bool, main: bool) -> str | None:
    """Check the run dir can take the run, clean what a killed run left, and return the checkpoint to resume from.
    Under torchrun every rank runs this: only rank 0 (`main`) touches files (two ranks renaming the same temp file
    was a real CI failure)."""
    run_dir = Path(cfg.output)
    check_output_dir(run_dir, need_bytes=(1200 if cfg.training.mode == "full" else 300) * 2**20)
    last = last_complete_checkpoint(run_dir / R.CHECKPOINTS, move_aside=main) if resume else None
    if not main:
        return last
    for leftover in (f"{R.MODEL}.tmp", f"{R.MODEL}.old"):  # debris of a save that was killed half-way
        shutil.rmtree(run_dir / leftover, ignore_errors=True)
    if resume and last is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir / R.CHECKPOINTS)
    if last is not None and (run_dir / R.METRICS).is_file():
        # Steps after the checkpoint are redone: drop their old records so each step is logged once.
        step = checkpoint_step(last)
        keep = [ln for ln in (run_dir / R.METRICS).read_text().splitlines() if _step(ln) <= step]
        atomic_write_text(run_dir / R.METRICS, "".join(x + "\n" for x in keep))
    if last is None:  # a fresh run — or a resume with nothing to resume — never mixes with an old one's files
        for name in (R.METRICS, R.MODEL, R.CHECKPOINTS, R.INCOMPLETE, R.SUMMARY, R.TEST_METRICS,
                     R.TEST_PREDICTIONS, R.ANALYSIS):
            p = run_dir / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    atomic_write_text(run_dir / R.CONFIG, dump_config(cfg))
    return last


def build_model(cfg: RunConfig, labels: LabelSet) -> LLMForTokenClassification:
    # LoRA/frozen on a bf16 GPU: the frozen weights in bf16. Full fine-tuning keeps fp32 master weights (autocast).
    bf16_weights = mixed_precision(cfg.training) == "bf16" and cfg.training.mode != "full"
    config, dtype = NERConfig.from_run(cfg, labels.to_dict()), torch.bfloat16 if bf16_weights else None
    if cfg.training.init:
        return LLMForTokenClassification.from_init(cfg.training.init, config, dtype)
    return LLMForTokenClassification.from_backbone(config, dtype)


def make_features(cfg: RunConfig, tokenizer, model: LLMForTokenClassification, sents: list[Sentence]) -> list[dict]:
    """Training windows as features; with `loss.class_weights: balanced`, sets the model's CE weights from them."""
    labels = model.labels
    no_start = frozenset(i for i, ok in enumerate(labels.allowed_starts().tolist()) if not ok)
    windows = encode_sentences(tokenizer, sents, labels.encode, cfg.model.max_length, cfg.model.stride,
                               cfg.data.context, no_start, instruction(labels, cfg.model.instruction))
    features = [window_feature(w, labels.continuation if cfg.model.label_all_subtokens else None) for w in windows]
    if cfg.loss.class_weights == "balanced":
        counts = Counter(lab for f in features for lab in f["labels"])
        total = sum(counts.values())
        w = [min(10.0, total / (len(labels) * counts[i])) if counts[i] else 1.0 for i in range(len(labels))]
        model.ce_weights.copy_(torch.tensor(w))
    return features


def tracking_callbacks(report_to: list[str], run_dir: Path) -> list:
    """The Trainer's own TensorBoard callback, writing to RUN/tensorboard (the Trainer's default is a dated folder
    under the checkpoints); a missing package is a one-line error before training, not a traceback after it."""
    import importlib.util

    for name, module in (("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")):
        if name in report_to and importlib.util.find_spec(module) is None:
            raise TrainError(f"training.report_to: {name} is not installed (pip install {module})")
    if "tensorboard" not in report_to:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(run_dir / "tensorboard")))]


def make_trainer(cfg: RunConfig, model, tokenizer, features: list[dict], dev: list[Sentence] | None,
                 progress: bool, callbacks: list | None) -> NERTrainer:
    t, run_dir = cfg.training, Path(cfg.output)
    eval_steps = t.eval_steps or math.ceil(len(features) / (t.batch_size * t.grad_accum))  # default: once an epoch
    precision = mixed_precision(t)
    args = TrainingArguments(
        output_dir=str(run_dir / R.CHECKPOINTS),
        per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs, max_steps=t.max_steps,
        lr_scheduler_type="cosine", warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        eval_strategy="steps" if dev else "no", eval_steps=eval_steps,
        save_strategy="steps", save_steps=t.save_steps or eval_steps, save_total_limit=2, save_only_model=False,
        logging_steps=t.logging_steps, logging_first_step=True,
        train_sampling_strategy="group_by_length", seed=t.seed, data_seed=t.seed,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
        report_to=[r for r in t.report_to if r != "tensorboard"], disable_tqdm=not progress,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    return NERTrainer(
        model=model, args=args, train_dataset=features, eval_dataset=features[:1] if dev else None,
        data_collator=lambda b: to_tensors(collate(b, tokenizer.pad_token_id)),
        optimizers=(make_optimizer(model, cfg), None),
        callbacks=[MetricsLogger(run_dir / R.METRICS), *tracking_callbacks(t.report_to, run_dir), *(callbacks or [])],
        dev=dev, ner_tokenizer=tokenizer, run_dir=run_dir, patience=t.early_stopping_patience,
        eval_batch_size=t.eval_batch_size, max_tokens_per_pass=t.max_tokens_per_pass,
    )


def fit(trainer: NERTrainer, last_checkpoint: str | None, run_dir: Path) -> tuple[float, float]:
    """Train (from the checkpoint, if any); returns (training loss, seconds)."""
    t0 = time.time()
    with disk_full_is_a_train_error(run_dir):
        result = trainer.train(resume_from_checkpoint=last_checkpoint)
        seconds = time.time() - t0
        # The last steps may not have been evaluated: do it now so the best model reflects all training. (The
        # Trainer itself evaluates at the last step in some versions; a second, identical evaluation would cost a dev
        # pass and count as one "without improvement" towards early stopping.)
        if trainer.dev and trainer.last_eval_step != trainer.state.global_step:
            trainer.evaluate()
    return result.training_loss, seconds


def test_step(cfg: RunConfig, splits: Splits, progress: bool) -> dict:
    """Score the best model on the test set; writes test_metrics.json, test_predictions.conll, analysis.json."""
    run_dir = Path(cfg.output)
    # fp32: a run's numbers are measured as trained, whatever the machine (prediction's "auto" may pick bf16)
    ner = NERModel.from_pretrained(run_dir / R.MODEL, batch_size=cfg.training.eval_batch_size, precision="fp32")
    t0 = time.time()
    m, pred = evaluate_model(ner, splits.test, progress, run_dir / R.TEST_METRICS, run_dir / R.TEST_PREDICTIONS)
    seconds = time.time() - t0
    atomic_write_text(run_dir / R.ANALYSIS, json.dumps(analyze(splits.test, pred, splits.train), indent=2) + "\n")
    log.info("%s", format_table(m, f"\nTest set ({cfg.data.test}):"))
    return {"test_seconds": round(seconds, 1), "test_words_per_second": round(m["tokens"] / max(seconds, 1e-9), 1),
            "test": {**{k: round(float(m[k]), 2) for k in ("f1", "precision", "recall", "macro_f1", "accuracy")},
                     "strict_f1": round(float(m["strict"]["f1"]), 2),
                     "entity_score_ece": round(m["calibration"]["ece"], 4),
                     "temperature": m["calibration"]["temperature"]}}


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, callbacks: list | None = None) -> dict:
    """Train, keep the best dev model, evaluate it on test (if there is one). Returns the summary (summary.json)."""
    def group_open() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    ours = not group_open()
    try:
        return _train(cfg, resume, progress, callbacks)
    finally:
        # Under torchrun the Trainer opens the process group; a process that exits with it still open can abort
        # in gloo's worker threads ("terminate called without an active exception", pytorch#190489): close what
        # we opened, leave a caller's own group alone.
        if ours and group_open():
            torch.distributed.destroy_process_group()


def _train(cfg: RunConfig, resume: bool, progress: bool, callbacks: list | None) -> dict:
    t, run_dir = cfg.training, Path(cfg.output)
    if t.threads:
        torch.set_num_threads(t.threads)
    set_seed(t.seed)
    rank = int(os.environ.get("RANK", "0"))  # torchrun: every rank trains, rank 0 writes the run dir's files

    cfg, start = continue_from(cfg)
    splits = load_data(cfg, start)
    last = prepare_run_dir(cfg, resume, main=rank == 0)
    tokenizer = load_tokenizer(cfg.model.backbone, cfg.model.gguf_file)
    model = build_model(cfg, splits.labels)
    if not cfg.training.init:  # a continued model keeps its trained head
        init_head(model, tokenizer)
    features = make_features(cfg, tokenizer, model, splits.train)
    n_tokens = sum(len(f["input_ids"]) for f in features)
    log.info("train: %d sentences -> %d windows, %d tokens; params %s", len(splits.train), len(features), n_tokens,
             model.parameter_counts())
    trainer = make_trainer(cfg, model, tokenizer, features, splits.dev, progress, callbacks)
    train_loss, train_seconds = fit(trainer, last, run_dir)
    if rank != 0:
        return {"global_step": trainer.state.global_step, "rank": rank}
    if not splits.dev:  # nothing to select on: the final model is the model
        model.save_pretrained(run_dir / R.MODEL, tokenizer=tokenizer)
    elif t.calibrate:  # entity scores calibrated on dev (calibration.json in the model dir)
        calibrate(run_dir / R.MODEL, splits.dev, cfg.data.dev, method=t.calibration_method,
                  seen=seen_forms(splits.train))

    model_type = getattr(model.backbone.config, "model_type", None)
    summary = {
        "system": "encoder" if backbones.is_encoder(cfg.model.backbone, model.backbone.config) else "llm",
        "model_type": model_type, "backbone": cfg.model.backbone,
        "train_sentences": len(splits.train), "train_tokens_per_epoch": n_tokens, "labels": splits.labels.tags,
        "parameters": model.parameter_counts(), "train_seconds": round(train_seconds, 1),
        "global_step": trainer.state.global_step, "train_loss": round(train_loss, 4),
        "best_dev_f1": round(float(trainer.best_f1), 2) if splits.dev else None,
        "data": {k: stats(v) for k, v in (("train", splits.train), ("dev", splits.dev), ("test", splits.test)) if v},
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)",
        "init": {"model_dir": cfg.training.init, **R.model_identity(cfg.training.init)} if cfg.training.init else None,
        "train_words_per_second": round(stats(splits.train)["tokens"] * (trainer.state.epoch or 0.0)
                                        / max(train_seconds, 1e-9), 1),
    }
    del trainer, model
    if splits.test:
        summary.update(test_step(cfg, splits, progress))
    else:
        summary["test"] = None
        log.info("no test set (data.test is not set): skipped the test step")
    # Peak resident memory of this process (ru_maxrss is KiB on Linux): compare runs each system in its own process.
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    atomic_write_text(run_dir / R.SUMMARY, json.dumps(summary, indent=2) + "\n")
    outputs = [f"{R.MODEL}/ (best on dev)", R.METRICS] + ([R.TEST_METRICS, R.TEST_PREDICTIONS, R.ANALYSIS]
                                                          if splits.test else []) + [R.SUMMARY]
    log.info("\nOutputs in %s%s: %s", run_dir.resolve(), os.sep, ", ".join(outputs))
    return summary
