"""Opt-in CPU speed-ups that compute the same numbers (up to float rounding) as diffusers' own modules.

Nothing applies them implicitly: the command line calls ``speed_up`` on the models it runs on a CPU, and the
ComfyUI nodes never import this package. Each changes only how a module computes, never its weights or
state-dict keys, and steps aside on a GPU, in half precision or with gradients enabled.

* ``upsampling``: nearest 2x upsampling + 3x3 convolution as one 2x2 convolution over the small image;
* ``cross_attention``: rows whose cross-attention context is all zeros (the unconditional branch of
  classifier-free guidance) filled with the output bias instead of computed.

For CPU runs, a faster allocator is also worth having; it is chosen when the process starts, for example
``LD_PRELOAD=$(ldconfig -p | grep -o '/.*libjemalloc.so.2' | head -1) python -m pcdms_core generate ...``.
"""

from __future__ import annotations

from torch import nn

from .cross_attention import skip_zero_context
from .upsampling import fold_upsamplers

__all__ = ["speed_up", "fold_upsamplers", "skip_zero_context"]


def speed_up(model: nn.Module) -> nn.Module:
    """Apply every CPU speed-up of this package to ``model`` in place (a VAE has no cross-attention: only its
    upsamplers change); returns ``model``."""
    fold_upsamplers(model)
    skip_zero_context(model)
    return model
