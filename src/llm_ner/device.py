"""What the hardware can do, asked once: native bf16 arithmetic on this CPU. A leaf module.

Why ask: PyTorch runs bf16 on any AVX512 CPU, but only CPUs with the AVX512-BF16 (or AMX-BF16) instructions do it
natively, and only when PyTorch's kernels are allowed to use them (not with ATEN_CPU_CAPABILITY forced to default or
avx2); elsewhere bf16 is emulated and slower than fp32, so "auto" precision must stay fp32 there."""

from __future__ import annotations

import functools
import platform


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in the CPU flags (Linux; other systems: False, i.e. fp32)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    # ... and PyTorch's kernels use them: with ATEN_CPU_CAPABILITY forced down (default / avx2), bf16 is emulated
    import torch

    return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2", "NO AVX")
