"""Precision checks that need nothing but torch (and our warning helper): which half-precision dtypes this CPU computes fast."""

from __future__ import annotations

import torch

from .errors import pcdms_warn

_HALF_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_warned_half: set = set()


def cpu_has_fast_half(dtype: torch.dtype) -> bool:
    """Whether this CPU has fast kernels for ``dtype`` (fp16 / bf16), as oneDNN reports it (AVX-512 BF16 / FP16,
    AMX or at least AVX-512). True when PyTorch cannot tell."""
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return True


def warn_if_slow_on_cpu(device, dtype: torch.dtype) -> None:
    """Warn once per dtype when a model is about to compute in fp16 / bf16 on a CPU without fast kernels for it:
    PyTorch then runs convolutions on a reference path hundreds of times slower than fp32 (a UNet 3 x 3
    convolution: 72 s in bf16 against 0.27 s in fp32 on an AVX2 processor), which looks like a hang."""
    if torch.device(device).type != "cpu" or dtype not in _HALF_NAMES or dtype in _warned_half:
        return
    if cpu_has_fast_half(dtype):
        return
    _warned_half.add(dtype)
    name = _HALF_NAMES[dtype]
    pcdms_warn(
        f"PCDMs: a model runs in {name} on a CPU that has no fast {name} kernels (PyTorch's oneDNN reports none "
        f"for this processor), so its convolutions take hundreds of times longer than in fp32. Load the models in "
        f"fp32 for CPU work (--dtype fp32 on the command line; dtype auto or fp32 on the PCDMs loaders).",
        RuntimeWarning,
        stacklevel=3,
    )


def model_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype ``module`` computes in (after ``warn_if_slow_on_cpu``'s check of them)."""
    p = next(module.parameters())
    warn_if_slow_on_cpu(p.device, p.dtype)
    return p.device, p.dtype
