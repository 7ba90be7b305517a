"""CPU inference speed-ups that change the weights: LoRA merging and dynamic int8 quantisation with SmoothQuant.

Dynamic int8 stores each nn.Linear weight as int8 (one scale per output channel) and quantises its input activations
on the fly: per token by default (`Int8Linear`, torch._int_mm: a token's output never depends on the rest of the
batch), or per tensor (torch.ao's quantize_dynamic: one scale per batch). Decoder LLMs have a few activation channels
far larger than the rest, so one scale crushes the small channels: on SmolLM2 plain per-tensor int8 cost ~7 F1.
SmoothQuant (Xiao et al., 2023) moves that range from the activations into the weights with an exact rewrite: for a
Linear fed by x, pick per-channel s_j = max|x_j|^a / max|W_:,j|^(1-a), compute (x / s) @ (W * s)^T — the same
numbers in fp32 — and fold the 1/s into whatever produced x (the RMSNorm weight before q/k/v and gate/up; the rows of
up_proj before down_proj). Activation ranges come from a short calibration pass. Per-token scales still need it:
the outlier channels sit inside every token.

Important: quantise *in place*. The unmasking hooks are bound methods of LLMForTokenClassification; a deep copy of the
backbone (which `quantize_dynamic(inplace=False)` makes) deep-copies them onto a stale copy of the model, and the
copied backbone silently runs causal attention.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..modeling.backbones import family
from ..modeling.model import LLMForTokenClassification, decoder_layers
from .precision import (  # noqa: F401 (the names every caller of quantize reads: precision.py owns them)
    DEFAULT_ALPHA,
    DEFAULT_KEEP_FP32,
    DEFAULT_SCHEME,
    PRECISIONS,
    SCHEMES,
    Int8Spec,
    PrecisionError,
    calibration_texts,
    check_precision,
)

log = logging.getLogger(__name__)

def merge_lora(model: LLMForTokenClassification) -> LLMForTokenClassification:
    """Fold LoRA adapters into the base weights in memory: same outputs, no adapter matmuls at inference. peft keeps
    the decoder-layer modules, so the unmasking hooks stay attached."""
    if hasattr(model.backbone, "merge_and_unload"):
        model.backbone = model.backbone.merge_and_unload()
    return model


@torch.no_grad()
def activation_absmax(backbone: nn.Module, run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """max |x_j| over every input channel j of every nn.Linear in the backbone, over whatever `run()` feeds it."""
    amax: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(mod, args):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            amax[name] = torch.maximum(amax[name], x) if name in amax else x
        return f

    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return amax


def _scale(amax: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    w = torch.stack([lin.weight.detach().abs().amax(0).float() for lin in linears]).amax(0)  # (in,)
    return (amax.clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


def _llama_style(layer: nn.Module) -> bool:
    need = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
    if not all(hasattr(layer, n) for n in need):
        return False
    at, mlp = layer.self_attn, layer.mlp
    return all(hasattr(at, n) for n in ("q_proj", "k_proj", "v_proj")) and all(
        hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))


@torch.no_grad()
def smooth(backbone: nn.Module, amax: dict[str, torch.Tensor], alpha: float = DEFAULT_ALPHA) -> int:
    """The SmoothQuant rewrite, in place, for Llama/Mistral/Qwen-style layers. fp32 outputs are unchanged (up to
    rounding). Returns the number of layers rewritten (0 if the architecture is not recognised)."""
    layers = decoder_layers(backbone)
    if not family(getattr(backbone.config, "model_type", None)).int8_smoothing:
        return 0  # e.g. Gemma: its norms scale by (1 + w), folding 1/s into w would be wrong (backbones.FAMILIES)
    if layers is None or not all(_llama_style(L) for L in layers):
        return 0
    name = {m: n for n, m in backbone.named_modules()}
    for L in layers:
        at, mlp = L.self_attn, L.mlp
        qkv = [at.q_proj, at.k_proj, at.v_proj]
        s = _scale(amax[name[at.q_proj]], qkv, alpha)  # (H,)
        L.input_layernorm.weight.div_(s.to(L.input_layernorm.weight.dtype))
        for lin in qkv:
            lin.weight.mul_(s.to(lin.weight.dtype))
        gu = [mlp.gate_proj, mlp.up_proj]
        s = _scale(amax[name[mlp.gate_proj]], gu, alpha)  # (H,)
        L.post_attention_layernorm.weight.div_(s.to(L.post_attention_layernorm.weight.dtype))
        for lin in gu:
            lin.weight.mul_(s.to(lin.weight.dtype))
        # down_proj's input is act(gate(x)) * up(x): linear in up's output rows, so 1/s folds into up_proj
        s = _scale(amax[name[mlp.down_proj]], [mlp.down_proj], alpha)  # (I,)
        mlp.up_proj.weight.div_(s[:, None].to(mlp.up_proj.weight.dtype))
        if mlp.up_proj.bias is not None:
            mlp.up_proj.bias.div_(s.to(mlp.up_proj.bias.dtype))
        mlp.down_proj.weight.mul_(s.to(mlp.down_proj.weight.dtype))
    return len(layers)


@functools.cache
def int_mm_is_exact() -> bool:
    """Does torch._int_mm give the exact int32 product on this CPU? It runs on oneDNN, whose int8 kernels without VNNI
    (AVX2 CPUs, AVX-512 before Cascade Lake, or ONEDNN_MAX_CPU_ISA capped below VNNI) add u8 x s8 products in pairs into
    saturating int16 (vpmaddubsw): full-range operands come out wrong — seen under .ci/run's second pass, an error of
    37,889 in a 130,097 result, and int8 models far off fp32 (issue 20). Probed once per process, on full-range operands
    (where saturation shows); the answer decides how Int8Linear multiplies."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (32, 256), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (256, 32), dtype=torch.int8, generator=g)
    exact = torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
    if not exact:
        log.warning("this CPU's int8 matmul (oneDNN without VNNI) saturates: int8 layers multiply their int8 values "
                    "in fp32 here — the same answers, without int8's speed-up")
    return exact


class Int8Linear(nn.Module):
    """y = x W^T + b with int8 weights (one scale per output channel), int8 activations with one scale per *token*,
    and exact int32 accumulation (torch._int_mm). torch.ao's dynamic int8 takes one activation scale per tensor, i.e.
    per batch: the same sentence could get other tags in another batch (seen in the service: 14/256 answers differed).
    Here each token's output depends on that token alone, and a token no longer shares its scale with the batch's
    largest activation. Kept over torchao's Int8DynamicActivationInt8WeightConfig (the same scheme, `scheme="torchao"`)
    because it measured better here: 1.30x torchao's words/s timed alternately (median of 5), 293 vs 102 words/s at
    batch 1, CoNLL test F1 75.62 vs 75.37 (fp32 75.63) — benchmarks/results/results.md, torch 2.13 / torchao 0.18."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()  # (out, in)
        scale = w.abs().amax(1).clamp(min=1e-8) / 127  # (out,)
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.register_buffer("weight_t", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)  # (out,)
        self.register_buffer("bias", None if lin.bias is None else lin.bias.detach().float())
        # where torch._int_mm saturates, the int8 values are multiplied in fp32 (exact while a dot product of the
        # integers stays below 2^24, i.e. for in_features up to ~1,000; beyond, fp32's own rounding)
        self.weight_f = None if int_mm_is_exact() else self.weight_t.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).float()  # (M, in)
        s = x2.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127  # (M, 1): one scale per token
        xq = (x2 / s).round_().clamp_(-127, 127).to(torch.int8)
        prod = torch._int_mm(xq, self.weight_t).float() if self.weight_f is None else xq.float() @ self.weight_f
        y = prod.mul_(s).mul_(self.weight_scale)  # (M, out)
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: LLMForTokenClassification, calibrate: Callable[[], object] | None = None,
                  alpha: float | None = DEFAULT_ALPHA, keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32,
                  scheme: str = DEFAULT_SCHEME) -> LLMForTokenClassification:
    """Merge LoRA, smooth (if `calibrate` runs some text through the model and alpha is not None), then replace every
    backbone nn.Linear whose name contains none of `keep_fp32` by an int8 one with per-channel weight scales — in
    place. `scheme`: activation scales per token (Int8Linear, batch-invariant) or per tensor (torch.ao dynamic).
    Head and CRF stay fp32."""
    if scheme not in SCHEMES:
        raise ValueError(f"int8 scheme {scheme!r}: choose one of {SCHEMES}")
    merge_lora(model)
    model.float().cpu().eval()
    if calibrate is not None and alpha is not None:
        n = smooth(model.backbone, activation_absmax(model.backbone, calibrate), alpha)
        log.info("SmoothQuant (alpha %.2f) on %d layers", alpha, n)
    names = [n for n, m in model.backbone.named_modules()
             if isinstance(m, nn.Linear) and not any(k in n for k in keep_fp32)]
    if scheme == "per_token":
        for n in names:
            parent, _, child = n.rpartition(".")
            owner = model.backbone.get_submodule(parent) if parent else model.backbone
            setattr(owner, child, Int8Linear(getattr(owner, child)))
        return model
    if scheme == "torchao":
        if not int_mm_is_exact():  # torchao's int8 x int8 path is the same saturating matmul: its answers are wrong
            raise ValueError("int8 scheme 'torchao': this CPU's int8 matmul saturates (oneDNN without VNNI); use the "
                             "default per_token scheme, which falls back to exact fp32 products here")
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError as e:
            raise ImportError("int8 scheme 'torchao' needs torchao: pip install torchao") from e
        chosen = set(names)
        quantize_(model.backbone, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in chosen)
        return model
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao; it still works
        warnings.simplefilter("ignore")
        quantize_dynamic(model.backbone, dict.fromkeys(names, per_channel_dynamic_qconfig), dtype=torch.qint8,
                         inplace=True)
    return model
