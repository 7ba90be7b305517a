"""The run configuration: one pydantic model per YAML section, so every knob is declared (and documented) in one
place. Unknown keys are errors. Command-line overrides use dotted keys: `--set training.learning_rate=1e-4`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    train: str = "conll2003:train"  # file path, bundled name (conll2003:train) or hf:NAME:SPLIT
    dev: str | None = "conll2003:valid"
    test: str | None = "conll2003:test"
    format: Literal["auto", "conll", "jsonl-tokens", "jsonl-spans", "multinerd"] = "auto"
    scheme: Literal["auto", "iob1", "iob2", "bio", "bioes", "bilou"] = "auto"
    strict: bool = False  # strict IOB2: an I-X after O is an error instead of being read as B-X
    max_train_sentences: int | None = None  # first N (deterministic subset)
    max_dev_sentences: int | None = None
    max_test_sentences: int | None = None
    keep_types: list[str] | None = None  # only these entity types; all others -> O ("system B")
    rename: dict[str, str | None] = Field(default_factory=dict)  # type renames; None/"O" drops the type
    label_schema: str | None = None  # JSON/YAML file with types (+ descriptions); default: types found in train


class ModelConfig(_Strict):
    backbone: str = "smollm2-135m"  # alias (offline), HF hub id, local dir, or path to a .gguf
    gguf_file: str | None = None  # GGUF file name inside a backbone dir
    unmask: str | list[int] = "all"  # all | none | upper_half | lower_half | "A-B" | [layer, ...]
    head_layers: list[int] = Field(default_factory=lambda: [-1])
    head_dropout: float = 0.1
    crf: bool = True
    label_all_subtokens: bool = False
    max_length: int = 256
    stride: int = 32
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    trust_remote_code: bool = False


class LossConfig(_Strict):
    ce_weight: float = 1.0
    crf_weight: float = 1.0  # ignored without a CRF
    label_smoothing: float = 0.0
    class_weights: Literal["none", "balanced"] = "none"


class LoraConfig(_Strict):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainingConfig(_Strict):
    mode: Literal["lora", "full", "frozen"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    learning_rate: float = 5e-5  # backbone (or LoRA adapters)
    head_learning_rate: float = 1e-3  # head + CRF (+ layer mix)
    epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    eval_batch_size: int = 32
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_steps: int | None = None  # None: evaluate on dev at the end of each epoch
    save_steps: int | None = None  # None: = eval_steps (checkpoint to resume from)
    logging_steps: int = 10
    early_stopping_patience: int | None = 3  # evaluations without dev-F1 gain before stopping; None = never
    seed: int = 42
    threads: int | None = None  # torch CPU threads; None = torch's default
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32

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


class ConfigError(ValueError):
    pass


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    d[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """YAML file (optional) + overrides {"training.learning_rate": 1e-4, ...} -> validated RunConfig."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    for k, v in (overrides or {}).items():  # None is a value here (--set data.test=null); callers drop unset flags
        _set_dotted(raw, k, v)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{path or 'config'}: {where}: {msg}" + (f" ({len(e.errors())} errors)"
                                                                   if len(e.errors()) > 1 else "")) from None


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
