"""The run configuration: one pydantic model per YAML section, so every knob is declared (and documented) in one
place. Unknown keys are errors. Command-line overrides use dotted keys: `--set training.learning_rate=1e-4`.

A saved model dir records the sections that define the model (`NERConfig`: model, loss, mode, LoRA, labels) with the
same classes, so a knob added here is trained, saved and loaded without another list to keep in step. A leaf module:
it imports only the error base class."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

Mode = Literal["lora", "full", "frozen"]
BUNDLED_CORPORA = ("conll2003", "wnut17")  # corpora shipped in the package, with train / valid / test splits
ADAPT_RECORD = "llm_ner_adapt.json"  # what `llm-ner adapt` writes beside the backbone it adapted (training/adapt.py)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    train: str = "conll2003:train"  # file path, bundled name (conll2003:train) or hf:NAME:SPLIT
    dev: str | None = None  # not given: the bundled corpus's valid split when train is bundled, else none
    test: str | None = None  # not given: the bundled corpus's test split when train is bundled, else none (no test)
    # auto (recognised from the content) or a name from the format registry, llm_ner.data.formats.FORMATS (checked
    # there when the data is read: config sits below data, so it cannot list them itself)
    format: str = "auto"
    scheme: Literal["auto", "iob1", "iob2", "bio", "bioes", "bilou"] = "auto"
    strict: bool = False  # strict IOB2: an I-X after O is an error instead of being read as B-X
    max_train_sentences: int | None = None  # first N (deterministic subset)
    max_dev_sentences: int | None = None
    max_test_sentences: int | None = None
    keep_types: list[str] | None = None  # only these entity types; all others -> O ("system B")
    rename: dict[str, str | None] = Field(default_factory=dict)  # type renames; None/"O" drops the type
    label_schema: str | None = None  # JSON/YAML file with types (+ descriptions); default: types found in train
    # sentence: each sentence is a text of its own. document: consecutive sentences of one document (CoNLL
    # -DOCSTART-, JSONL "doc_id") are joined into one text, cut into windows of model.max_length tokens, so every
    # sentence is trained and predicted with its neighbours as context; scores stay per sentence.
    context: Literal["sentence", "document"] = "sentence"

    @model_validator(mode="after")
    def _default_splits(self) -> DataConfig:
        # A run's dev/test sets come from the user's data: the bundled ones only go with bundled training data
        # (a biomedical run must not be scored on CoNLL-2003 news because the default config named it).
        corpus, _, split = self.train.partition(":")
        bundled = corpus in BUNDLED_CORPORA and split == "train" and not Path(self.train).exists()
        for name, split_name in (("dev", "valid"), ("test", "test")):
            if name not in self.model_fields_set and bundled:
                setattr(self, name, f"{corpus}:{split_name}")
        return self


class ModelConfig(_Strict):
    backbone: str = "smollm2-135m"  # alias (offline), HF hub id, local dir, or path to a .gguf
    gguf_file: str | None = None  # GGUF file name inside a backbone dir
    unmask: str | list[int] = "all"  # all | none | upper_half | lower_half | middle_third | "A-B" | [layer, ...]
    head_layers: list[int] = Field(default_factory=lambda: [-1])
    head_dropout: float = 0.1
    # The head's rows at the start of training. random: N(0, 0.02). names: each type's B- and I- rows point where the
    # backbone puts the type's name ("person" for PER: labels.TYPE_WORDS); descriptions: the label schema's one-line
    # description where there is one, else the name (training/head_init.py).
    head_init: Literal["random", "names", "descriptions"] = "random"
    # An instruction naming the types, read before every window's words and attended to (never tagged, never scored):
    # "Entity types: person, organisation, ..." from the names (labels.TYPE_WORDS) or the schema's descriptions
    # (labels.instruction). It costs its tokens in every window, at training and prediction alike.
    instruction: Literal["none", "names", "descriptions"] = "none"
    crf: bool = True
    label_all_subtokens: bool = False
    max_length: int = 256
    stride: int = 32
    # sdpa; "eager" trains faster in bf16 on a CPU (torch 2.13's CPU flash-attention backward is ~10x slower in bf16)
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    train_embeddings: bool = True  # full fine-tuning: also train the input embeddings (false: keep them frozen)
    # Full fine-tuning: keep the first N decoder layers as pre-trained (no gradients). With frozen embeddings the
    # backward pass stops at layer N, so a step costs less (issue 22: the step is matmul-bound, backward ~57 %).
    freeze_layers: int = Field(default=0, ge=0)
    # How a word sees the words after it. unmask: the attention mask of the `unmask` layers hides only padding.
    # repeat (Kukic et al. 2026): the input is fed `repeat` times in a row and each word is read from its last copy,
    # which has seen every word of the first copies — no change to attention (unmask then defaults to none).
    transform: Literal["unmask", "repeat"] = "unmask"
    repeat: int = Field(default=2, ge=2)  # copies, for transform: repeat
    # Early exit: read the hidden state after this many decoder layers and drop the layers above (faster, too).
    # None: all layers.
    exit_layer: int | None = Field(default=None, ge=1)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _repeat_keeps_causal(self) -> ModelConfig:
        if self.transform == "repeat" and "unmask" not in self.model_fields_set:
            self.unmask = "none"
        return self


class LossConfig(_Strict):
    ce_weight: float = 1.0
    crf_weight: float = 1.0  # ignored without a CRF
    label_smoothing: float = 0.0
    class_weights: Literal["none", "balanced"] = "none"


class LoraConfig(_Strict):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # None: the backbone family's attention and MLP projections (modeling/backbones.py FAMILIES)
    targets: list[str] | None = None


class TrainingConfig(_Strict):
    mode: Mode = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    learning_rate: float = 5e-5  # backbone (or LoRA adapters)
    head_learning_rate: float = 1e-3  # head + CRF (+ layer mix)
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    eval_batch_size: int = 32
    grad_accum: int = 1
    # Memory: a step's batch is run in passes of at most this many padded tokens (rows x longest row), each forward
    # and backward on its own; the gradient is the same (training/train.py NERTrainer.training_step). Activations
    # grow with the longest batch (32 sentences of 200 tokens: 13-17 GB); None = the whole batch in one pass.
    max_tokens_per_pass: int | None = Field(default=None, ge=1)
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_steps: int | None = None  # None: evaluate on dev at the end of each epoch
    save_steps: int | None = None  # None: = eval_steps (checkpoint to resume from)
    logging_steps: int = 10
    early_stopping_patience: int | None = 3  # evaluations without dev-F1 gain before stopping; None = never
    seed: int = 42
    # Continue from a saved model dir (llm-ner train --init RUN/model): its backbone as trained, its head and CRF, and
    # its model section (unmasking, exit layer, ...). Its labels stay; entity types new in the data are added with
    # fresh head rows. None: start from model.backbone.
    init: str | None = None
    threads: int | None = None  # torch CPU threads; None = torch's default
    # auto: bf16 autocast on a GPU that has it, else fp32. bf16 on a CPU: autocast where the CPU has native bf16.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # After training, calibrate entity scores on the dev set (evaluation/calibrate.py; tags and F1 unchanged) by
    # calibration_method: temperature (one T for every score), logistic (the score, seen in training, length and
    # type: inference/confidence.py) or auto (the one whose ECE holds better on the half of dev it was not fitted on).
    calibrate: bool = True
    calibration_method: Literal["auto", "temperature", "logistic"] = "auto"
    # Experiment tracking, passed to the Trainer: tensorboard (event files in RUN/tensorboard), mlflow (its own
    # MLFLOW_TRACKING_URI, default ./mlruns), wandb; each needs its package installed. Default: none.
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        if v in (None, "none"):
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("learning_rate", "head_learning_rate")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: str = "runs/run"
    # Per backbone, the training recipe chosen for it on dev (scripts/recipe_search.py, docs/results.md "Recipes"):
    # {backbone: {dotted key: value}}. load_config applies the entry of the run's model.backbone over the file's
    # values and under the command line's, so `--model X` trains X with X's recipe, not another backbone's.
    recipes: dict[str, dict[str, object]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _freeze_is_for_full_fine_tuning(self) -> RunConfig:
        if self.model.freeze_layers and self.training.mode != "full":  # lora / frozen: it would be ignored
            raise ValueError(f"model.freeze_layers applies to training.mode full, not {self.training.mode}")
        return self


class AdaptConfig(_Strict):
    """`llm-ner adapt`: continued pre-training of a backbone on unlabelled text before any label (training/adapt.py).
    Decoders: masked next-token prediction through the attention fine-tuning will use (LLM2Vec's MNTP: a share of
    the tokens masked, token i predicted from position i-1 by the model's own LM head); encoders: masked-LM."""

    backbone: str = "gemma3-270m"  # alias, hub id, local dir or .gguf, as model.backbone
    gguf_file: str | None = None
    # The text: a file in any format `predict` reads (its words only; tags never), or a bundled split
    # (conll2003:train). Never the dev or test text of a run you will score.
    pool: str = "conll2003:train"
    pool_format: str = "auto"  # auto or a name from the format registry (llm_ner.data.formats.FORMATS)
    objective: Literal["auto", "mntp", "mlm"] = "auto"  # auto: mntp for a decoder, mlm for an encoder
    unmask: str | list[int] = "all"  # decoders: the layers adapted bidirectional (as model.unmask; "none": causal)
    attn_implementation: Literal["sdpa", "eager"] = "eager"  # eager: faster bf16 backward on a CPU (model section)
    mask_ratio: float = Field(default=0.2, gt=0, lt=1)  # LLM2Vec's MNTP configs mask 20 %; BERT masked 15 %
    max_length: int = Field(default=128, ge=8)  # tokens a chunk (the pool's texts are joined, then cut)
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = 0.0
    # The budget: steps (> 0), else tokens (the pool read once when neither is set); `minutes` stops earlier
    # whatever the schedule (the record says so).
    max_steps: int = -1
    max_tokens: int | None = Field(default=None, ge=1)
    minutes: float | None = Field(default=None, gt=0)
    heldout_chunks: int = Field(default=32, ge=1)  # the pool's last chunks, never trained on: the loss before/after
    # The input embeddings (and a tied LM head with them) keep their pre-trained values: a step touches few of the
    # 262k rows, and the head that scores the masked tokens should not drift to make the task easy.
    train_embeddings: bool = False
    save_steps: int = 25
    logging_steps: int = 5
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "bf16"  # bf16: autocast where the CPU computes bf16 natively
    threads: int | None = None
    output: str = "runs/adapted"


class ConfigError(UserError, ValueError):
    """A bad config file, --set override or saved model config; the message names the key."""


# Knobs that change how a run is computed, not what it learns (a step in passes has the one-pass gradient: tested in
# tests/test_model.py), with the seed and the output dir: two runs that differ only in these repeat one recipe.
# `recipes` is the table a run's values were looked up in, already applied to training.* / model.*: a run saved with
# an empty table (the recipe search's) and one saved with the full table trained the same recipe.
NOT_THE_RECIPE = ("output", "training.seed", "training.max_tokens_per_pass", "training.threads",
                  "training.eval_batch_size", "training.report_to", "training.save_steps", "training.logging_steps",
                  "recipes")


def first_error(e: ValidationError) -> str:
    """pydantic's first error as "dotted.key: what is wrong" — the key left out for a check of a whole section, and
    pydantic's "Value error, " prefix dropped; the one wording of a config error, for run and saved-model configs."""
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


NER_CONFIG_VERSION = 2


class NERConfig(_Strict):
    """What a saved model dir records (llm_ner_config.json): the run config's model-defining sections, unchanged,
    plus the labels and what was saved of the backbone. Built from a RunConfig; version 1 files (a flat dict with
    other field names) are read by `from_v1`."""

    format_version: int = NER_CONFIG_VERSION
    labels: dict  # LabelSet.to_dict()
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    mode: Mode = "full"  # TrainingConfig.mode
    context: Literal["sentence", "document"] = "sentence"  # DataConfig.context: how sentences are fed at prediction
    lora: LoraConfig = Field(default_factory=LoraConfig)  # TrainingConfig.lora
    # what the dir holds: save_pretrained's backbone/, adapter/ or nothing; or an `llm-ner export`'s graph
    backbone_saved: Literal["full", "lora", "none", "onnx", "openvino"] = "none"
    # transformers' Trainer sets `model.config.use_cache` on any model it trains; accepted, never saved.
    use_cache: bool | None = Field(default=None, exclude=True)

    @classmethod
    def from_run(cls, cfg: RunConfig, labels: dict) -> NERConfig:
        return cls(labels=labels, model=cfg.model.model_copy(deep=True), loss=cfg.loss.model_copy(deep=True),
                   mode=cfg.training.mode, lora=cfg.training.lora.model_copy(deep=True), context=cfg.data.context)

    @classmethod
    def from_dict(cls, d: dict) -> NERConfig:
        """Any format version -> NERConfig. Raises ConfigError naming the field on a mismatch."""
        if d.get("format_version", 1) == 1:
            d = cls.from_v1(d)
        elif d.get("format_version", 1) > NER_CONFIG_VERSION:
            raise ConfigError(f"format_version {d['format_version']} was written by a newer llm-ner")
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise ConfigError(first_error(e)) from None

    @staticmethod
    def from_v1(d: dict) -> dict:
        """Version 1 (llm-ner <= 0.1, flat, `use_crf`, `lora_r`, ...) -> the version 2 layout."""
        d = dict(d)
        v2: dict = {"format_version": NER_CONFIG_VERSION, "labels": d.pop("labels", None), "model": {}, "loss": {},
                    "lora": {}}
        renames = {"use_crf": ("model", "crf"), "lora_r": ("lora", "r"), "lora_alpha": ("lora", "alpha"),
                   "lora_dropout": ("lora", "dropout"), "lora_targets": ("lora", "targets")}
        for key, value in d.items():
            if key in renames:
                section, name = renames[key]
                v2[section][name] = value
            elif key in ModelConfig.model_fields:
                v2["model"][key] = value
            elif key in LossConfig.model_fields:
                v2["loss"][key] = value
            elif key in ("mode", "backbone_saved"):
                v2[key] = value
            elif key != "format_version":
                raise ConfigError(f"unknown field {key!r} in a version 1 config")
        v2.setdefault("mode", "lora")  # version 1's default
        return v2

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2) + "\n"

    # the names transformers' tracking callbacks (TensorBoard, MLflow, W&B) call on `model.config`
    def to_dict(self) -> dict:
        return self.model_dump()

    def to_json_string(self, use_diff: bool = True) -> str:
        return self.to_json()


def config_path(name: str | Path) -> Path:
    """A config file: a path, or the name of one shipped in the package (quickstart, conll2003, wnut17, ...)."""
    p = Path(name)
    if p.is_file():
        return p
    bundled = resources.files("llm_ner") / "configs"
    if (bundled / f"{name}.yaml").is_file():
        return Path(str(bundled / f"{name}.yaml"))
    names = sorted(f.name[:-5] for f in bundled.iterdir() if f.name.endswith(".yaml"))
    raise ConfigError(f"{p}: config file not found (bundled configs: {', '.join(names)})")


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    d[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: dict | None = None, base: dict | None = None) -> RunConfig:
    """YAML file or bundled config name (optional) + overrides {"training.learning_rate": 1e-4, ...} -> validated
    RunConfig. Layers, each over the one before: the file, `base` (what turns a config into another system, e.g. the
    encoder baseline), the file's recipe for the resulting backbone, then `overrides`."""
    raw: dict = {}
    if path is not None:
        p = config_path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    overrides = overrides or {}
    for k, v in (base or {}).items():
        _set_dotted(raw, k, v)
    backbone = overrides.get("model.backbone", (raw.get("model") or {}).get("backbone", ModelConfig().backbone))
    recipes = raw.get("recipes") or {}
    if not isinstance(recipes, dict) or not all(isinstance(r, dict) for r in recipes.values()):
        raise ConfigError(f"{path or 'config'}: recipes: expected backbone: {{dotted.key: value}}")
    for k, v in recipes.get(backbone, recipes.get(adapted_from(backbone), {})).items():
        _set_dotted(raw, k, v)
    for k, v in overrides.items():  # None is a value here (--set data.test=null); callers drop unset flags
        _set_dotted(raw, k, v)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        n = len(e.errors())
        raise ConfigError(f"{path or 'config'}: {first_error(e)}" + (f" ({n} errors)" if n > 1 else "")) from None


def adapted_from(backbone: str) -> str:
    """The backbone an adapted one (`llm-ner adapt`'s output dir) started from, named as it was; else itself. An
    adapted backbone trains with its base's recipe unless the config has a recipe for the dir itself."""
    record = Path(backbone) / ADAPT_RECORD
    if not record.is_file():
        return backbone
    try:
        return str(json.loads(record.read_text()).get("adapted_from", backbone))
    except (OSError, json.JSONDecodeError):
        return backbone


def parse_set(items: list[str] | None) -> dict:
    """["a.b=1", "c=x"] -> {"a.b": 1, "c": "x"} (values parsed as YAML scalars/lists)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--set {it!r}: expected key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
