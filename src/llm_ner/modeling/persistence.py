"""A model directory on disk, written by `save_pretrained` and read back by `from_pretrained` / `from_init`:

    llm_ner_config.json   NERConfig: the model-defining sections, the labels, what was saved of the backbone
                          (written last: its presence marks a complete save)
    head.safetensors      head, CRF and layer mix (fp32)
    backbone/ | adapter/  the full backbone (full fine-tuning, or LoRA merged) | the LoRA adapter | nothing (frozen:
                          the backbone is re-read from model.backbone)
    tokenizer files       as transformers saves them

The config half is torch-free (read_model_config): a CLI or a server checks a model dir before loading anything.
The weight half imports torch inside its functions for the same reason.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..config import ConfigError, NERConfig
from ..errors import UserError
from ..fsutil import atomic_write_text
from ..labels import LabelSet
from . import backbones

CONFIG_NAME = "llm_ner_config.json"
HEAD_NAME = "head.safetensors"
# `llm-ner export --format onnx | openvino` (inference/runtimes.py) writes the network as a graph instead of weights:
# config.backbone_saved names the format, and the dir is loaded by that runtime
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "openvino_model.xml"}
RUNTIMES = ("auto", "torch", *GRAPH_FILES)  # --runtime: auto = what the model dir holds
EXPORT_RECORD = "llm_ner_export.json"  # how the export was made and what its check measured


def graph_inputs(packable: bool) -> list[str]:
    """An exported graph's inputs (modeling/graph.py writes them, inference/runtimes.py feeds them)."""
    return (["input_ids", "segment_ids", "position_ids", "word_positions"] if packable
            else ["input_ids", "attention_mask", "word_positions"])


class ModelLoadError(UserError, RuntimeError):
    """A model directory that cannot be loaded (missing/corrupt files); the message says which file."""


def read_model_config(path: str | Path) -> NERConfig:
    """A model dir's llm_ner_config.json (any format version); a ModelLoadError names what is wrong. Cheap: callers
    that start a server or a cluster job check the dir with it before loading anything."""
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model dir")
    if not cfg_file.is_file():
        raise ModelLoadError(f"{path}: not an llm-ner model dir ({CONFIG_NAME} missing; was the save completed?)")
    try:
        raw = json.loads(cfg_file.read_text())
        if not isinstance(raw, dict):
            raise ConfigError("expected a JSON object")
        return NERConfig.from_dict(raw)
    except (json.JSONDecodeError, ConfigError) as e:
        raise ModelLoadError(f"{cfg_file}: corrupt config ({e})") from None


def check_runtime_name(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")


def exports_in(path: str | Path) -> list[tuple[Path, dict]]:
    """The checked exports inside a PyTorch model dir — `llm-ner export` writes them to MODEL/onnx, MODEL/openvino,
    MODEL/openvino-int8 by default, as Hugging Face model repos carry onnx/ and openvino/ — with their records."""
    out = []
    for d in sorted(p for p in Path(path).iterdir() if p.is_dir()) if Path(path).is_dir() else []:
        try:
            record = json.loads((d / EXPORT_RECORD).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("precision") and record.get("format") in GRAPH_FILES:
            out.append((d, record))
    return out


def fastest_export(path: str | Path) -> tuple[Path, dict, float, float] | None:
    """What `--runtime auto` runs for a PyTorch model dir: the export inside it that predicted its check set fastest
    at the precision its check chose (spans and F1 held there), if that was faster than PyTorch in the same check —
    (dir, record, its words/s, PyTorch's best words/s); else None (PyTorch runs it)."""
    best = None
    for d, rec in exports_in(path):
        wps = rec["check"][rec["precision"]].get("words_per_second")
        torch_wps = max((rec.get("torch_words_per_second") or {}).values(), default=None)
        if wps and torch_wps and wps > torch_wps and (best is None or wps > best[2]):
            best = (d, rec, wps, torch_wps)
    return best


def check_runtime(path: str | Path, runtime: str) -> str:
    """`runtime` against what the model dir holds -> the runtime that loads it; a one-line UserError otherwise."""
    check_runtime_name(runtime)
    holds = read_model_config(path).backbone_saved
    exported = holds if holds in GRAPH_FILES else None
    if runtime == "auto":
        return exported or "torch"
    if exported and runtime != exported:
        raise ModelLoadError(f"{path} holds an {exported} export: load it with --runtime {exported} (or auto)")
    if not exported and runtime != "torch":
        raise ModelLoadError(f"{path} is a PyTorch model dir: `llm-ner export --model {path} --format {runtime}` "
                             f"writes an export that --runtime {runtime} loads")
    return runtime


def save(model, path: str | Path, tokenizer=None, merge_lora: bool = False) -> None:
    """config + head/CRF weights + (full backbone | LoRA adapter | nothing for a frozen backbone), safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config.model_copy(deep=True)
    is_peft = hasattr(model.backbone, "peft_config")
    if cfg.mode == "full" or (is_peft and merge_lora) or model.backbone_changed:
        bb = model.backbone
        if is_peft:  # merge a copy so the live model keeps its adapters
            bb = copy.deepcopy(model.backbone).merge_and_unload()
        bb.save_pretrained(path / "backbone", safe_serialization=True)
        cfg.backbone_saved = "full"
    elif is_peft:
        model.backbone.save_pretrained(path / "adapter", safe_serialization=True)
        cfg.backbone_saved = "lora"
    else:
        cfg.backbone_saved = "none"
    save_file(model.head_state_dict(), str(path / HEAD_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    atomic_write_text(path / CONFIG_NAME, cfg.to_json())  # config last: its presence marks a complete save


def load(cls, path: str | Path, device: str | None = None, trust_remote_code: bool = False, dtype=None):
    """`cls.from_pretrained`: the saved model, in eval mode, on `device`."""
    path = Path(path)
    cfg = read_model_config(path)
    cfg.model.trust_remote_code = trust_remote_code
    model, state = _from_saved(cls, path, cfg, cfg, dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ModelLoadError(f"{path / HEAD_NAME}: missing {missing}, unexpected {unexpected}")
    model.eval()
    if device:
        model.to(device)
    return model


def load_to_continue(cls, path: str | Path, config: NERConfig, dtype=None):
    """`cls.from_init`: a model to train further (config.mode) that starts from a saved one: its backbone as trained
    (LoRA adapters merged in), head and CRF. `config.labels` may add types to the saved ones: each saved tag keeps its
    head row, CRF scores and class weight; a new tag starts fresh. `config.model` must be the saved model's."""
    path = Path(path)
    saved = read_model_config(path)
    if config.model.model_dump(exclude={"trust_remote_code"}) != saved.model.model_dump(
            exclude={"trust_remote_code"}):
        raise ConfigError(f"{path}: --init continues this model, so the run's model section must be the saved one")
    model, state = _from_saved(cls, path, config, saved, dtype)
    if hasattr(model.backbone, "peft_config"):
        model.backbone = model.backbone.merge_and_unload()
    old = LabelSet.from_dict(saved.labels).tags
    lost = set(old) - set(model.labels.tags)
    if lost:
        raise ConfigError(f"{path}: --init keeps the saved model's labels, but {sorted(lost)} are missing")
    own = grown_state(model.state_dict(), state, {i: model.labels.tags.index(t) for i, t in enumerate(old)})
    model.load_state_dict({k: v for k, v in own.items() if not k.startswith("backbone.")}, strict=False)
    model.backbone_changed = saved.backbone_saved != "none"
    model.setup_mode()
    return model


def grown_state(own: dict, saved: dict, new_ids: dict[int, int]) -> dict:
    """The saved head's tensors moved into a model with more tags: `new_ids` maps each saved tag id to its id now;
    rows and CRF scores of new tags keep `own`'s fresh values."""
    n_old = len(new_ids)
    for key, value in saved.items():
        target = own[key].clone()
        if key.endswith("_mask"):  # the CRF's IOB2 constraints: built from the labels, not learned
            continue
        if key == "crf.transitions":
            for i, a in new_ids.items():
                for j, b in new_ids.items():
                    target[a, b] = value[i, j]
        elif value.shape[:1] == (n_old,) and key != "layer_mix":  # per-tag rows: classifier, CRF start/end
            for i, a in new_ids.items():
                target[a] = value[i]
        else:
            target = value
        own[key] = target
    return own


def _from_saved(cls, path: Path, config: NERConfig, saved: NERConfig, dtype):
    """A model of `config` on the backbone saved in `path` (as `saved` describes it), and the saved head's tensors,
    not yet loaded. A broken dir is one ModelLoadError."""
    from safetensors.torch import load_file

    m, trust = saved.model, config.model.trust_remote_code
    if saved.backbone_saved in GRAPH_FILES:
        raise ModelLoadError(f"{path}: an {saved.backbone_saved} export (no PyTorch network): predict with it "
                             "(NERModel.from_pretrained, --runtime auto); train or export from the model it came from")
    try:
        if saved.backbone_saved == "full":
            backbone = backbones.load(str(path / "backbone"), None, m.attn_implementation, trust, dtype)
        else:
            backbone = backbones.load(m.backbone, m.gguf_file, m.attn_implementation, trust, dtype)
        model = cls(config, backbone)
        if saved.backbone_saved == "lora":
            from peft import PeftModel

            model.backbone = PeftModel.from_pretrained(backbone, path / "adapter")
        state = load_file(str(path / HEAD_NAME))
    except (ModelLoadError, backbones.BackboneError):
        raise
    except Exception as e:  # safetensors/json/peft errors have many types; all mean "this dir is broken"
        msg = f"{path}: cannot load model ({type(e).__name__}: {str(e).splitlines()[0]})"
        if "custom code" in str(e) and not trust:
            msg += " - its code was not run; pass trust_remote_code=True (--trust-remote-code) only if you trust it"
        raise ModelLoadError(msg) from e
    return model, state
