"""The precisions prediction runs at — names, the one check, the int8 recipe's knobs, the check sentences — without
PyTorch: the CLI, the service's settings and an exported model read them; quantize.py applies them to a PyTorch
model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..data import load_corpus
from ..errors import UserError
from ..modeling.processor import sentence_text

DEFAULT_ALPHA = 0.5  # migration strength, chosen on CoNLL-2003 dev (benchmarks/results/results.md, dev_int8_*)
# Linear layers (name substrings) left in fp32. With per-tensor scales down_proj (the widest activation range: the
# MLP's product of two projections) had to stay fp32 to keep F1; with per-token scales every Linear can be int8
# (dev F1 80.58 vs fp32 80.70, and ~1.4x faster than keeping down_proj fp32).
DEFAULT_KEEP_FP32: tuple[str, ...] = ()


def calibration_texts(n: int = 128) -> list[str]:
    """Generic English news sentences (the bundled CoNLL-2003 train split, no labels used); read without the "read
    ..." log line, which would look like the user's data."""
    quiet = logging.getLogger("llm_ner.data.formats")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return [sentence_text(s.tokens)[0] for s in load_corpus("conll2003:train", limit=n)]
    finally:
        quiet.setLevel(level)


# "torchao": the same scheme as Int8Linear (per-token activation, per-channel weight scales) from the torchao
# library (optional: `pip install llm-ner[torchao]`), kept beside ours to measure them side by side (benchmarks/run
# --only llm_int8_torchao,int8_torchao_paired).
SCHEMES = ("per_token", "per_tensor", "torchao")
DEFAULT_SCHEME = "per_token"


# The precisions every entry point offers (predict, evaluate, select, serve, batch-predict, the spaCy component), with
# the help each shows: `NERModel.from_pretrained(precision=...)` is where they are applied.
class PrecisionError(UserError, ValueError):
    """A precision this model or device cannot run (a one-line CLI error; a ValueError for library callers)."""


PRECISIONS = {
    "auto": "bf16 where the hardware does bf16 natively and the model's spans on check sentences hold, else fp32 "
            "(the default; the choice is logged once)",
    "fp32": "full precision, as trained and measured",
    "bf16": "the backbone in bf16 (fast on CPUs with native bf16, and GPUs)",
    "int8": "SmoothQuant int8 Linear layers (CPU); benchmarks/results/results.md",
}


def check_precision(precision: str) -> str:
    """The one check of a precision name (NERModel.from_pretrained, ServeConfig, batch-predict before Ray starts)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


@dataclass(frozen=True)
class Int8Spec:
    """How to quantise: `NERModel.from_pretrained(..., precision="int8")` takes the defaults; benchmarks pass a spec
    to sweep them (activation-scale scheme, SmoothQuant strength alpha — None: no smoothing —, layers kept fp32)."""

    scheme: str = DEFAULT_SCHEME
    alpha: float | None = DEFAULT_ALPHA
    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32

    @classmethod
    def parse(cls, spec: str | Int8Spec | None) -> Int8Spec | None:
        if spec is None or isinstance(spec, Int8Spec):
            return spec
        if spec != "int8":
            raise ValueError(f"precision={spec!r}: use one of {', '.join(PRECISIONS)} (or an Int8Spec)")
        return cls()


