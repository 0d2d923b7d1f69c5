"""Nearest 2x upsampling followed by a 3x3 convolution, computed on the small image.

Every up block of the Stable Diffusion UNet and of its VAE's decoder ends in diffusers' ``Upsample2D``: each
pixel is repeated into a 2 x 2 block, then a 3 x 3 convolution (padding 1) runs over the enlarged image. Of
the nine taps of an output pixel, several read the same input pixel, so each of the four output phases
(row parity a, column parity b) is a 2 x 2 convolution of the small image with summed taps:

* along one axis, phase 0 reads the small image at offsets (-1, 0) with taps (w0, w1 + w2), phase 1 at
  (0, +1) with (w0 + w1, w2); the same holds for the other axis.

One 2 x 2 convolution over the small image padded by one pixel, with the four phases' kernels stacked as 4 x
out_channels, computes them all; its output row r gives, for phase a, enlarged row 2 (r - a) + a. That is 16
multiply-adds per output pixel and input channel instead of 36, and the enlarged image is never built. It
is the same sum in another order: results differ from the direct computation by float rounding only (a few
1e-6 of the largest value in fp32).

Why: on a CPU it is markedly faster (figures in docs/benchmarks.md). It runs for inference only (gradients
disabled), on the CPU in fp32/fp64, with the module's weights unchanged (state dicts, saving and training see
the plain diffusers module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusers_glue import Upsample2D

_DTYPES = (torch.float32, torch.float64)

# For each phase along one axis, which of the three taps fall on each of the two small-image offsets.
_PHASE_TAPS = (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))


def _fold_matrices(dtype, device) -> torch.Tensor:
    """[4, 9, 4]: for phase (a, b), the map from the 3 x 3 taps (row-major) to the 2 x 2 folded taps."""
    r = torch.tensor(_PHASE_TAPS, dtype=dtype, device=device)  # [phase, 2, 3]
    m = torch.einsum("apk,bql->abklpq", r, r)  # [a, b, 3, 3, 2, 2]
    return m.reshape(4, 9, 4)


def fold_weight(weight: torch.Tensor) -> torch.Tensor:
    """The ``[O, I, 3, 3]`` kernel of the convolution after the upsampling, as the ``[4 O, I, 2, 2]`` kernel of
    the four phases (a, b) = (0, 0), (0, 1), (1, 0), (1, 1) over the small image."""
    o, i = weight.shape[:2]
    # one product for the four phases (the weight is read once), then the phases moved to the front
    m = _fold_matrices(weight.dtype, weight.device).transpose(0, 1).reshape(9, 16)
    taps = torch.mm(weight.reshape(o * i, 9), m).view(o, i, 4, 4)  # [O, I, phase, 2 x 2 taps]
    return taps.permute(2, 0, 1, 3).reshape(4 * o, i, 2, 2)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a 3 x 3 ``weight``,
    computed on ``x`` itself (see the module's docstring)."""
    n, _, h, w = x.shape
    o = weight.shape[0]
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), fold_weight(weight), None if bias is None else bias.repeat(4))
    phases = phases.view(n, 2, 2, o, h + 1, w + 1)
    out = torch.empty(n, o, h, 2, w, 2, dtype=phases.dtype, device=phases.device)
    for a in (0, 1):
        for b in (0, 1):
            out[:, :, :, a, :, b] = phases[:, a, b, :, a:a + h, b:b + w]
    return out.view(n, o, 2 * h, 2 * w)


def _conv_of(module: nn.Module) -> nn.Module | None:
    return getattr(module, "conv" if getattr(module, "name", "conv") == "conv" else "Conv2d_0", None)


def _foldable(module: nn.Module) -> bool:
    """A nearest 2x upsampler followed by a plain 3 x 3, stride-1, padding-1 convolution, without a norm."""
    conv = _conv_of(module)
    return (
        isinstance(module, Upsample2D)
        and getattr(module, "use_conv", False) and not getattr(module, "use_conv_transpose", True)
        and getattr(module, "interpolate", False) and getattr(module, "norm", None) is None
        and type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
        and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
    )


class FoldedUpsample2D(Upsample2D):
    """diffusers' ``Upsample2D`` whose inference on the CPU goes through ``upsample_conv``; anything else (a
    GPU, gradients, half precision, an explicit ``output_size``) takes the original path."""

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        conv = _conv_of(self)
        if (
            output_size is None and not args and not kwargs
            and hidden_states.ndim == 4 and hidden_states.shape[1] == self.channels
            and hidden_states.device.type == "cpu" and hidden_states.dtype in _DTYPES
            and conv.weight.dtype == hidden_states.dtype and conv.weight.device.type == "cpu"
            and not (torch.is_grad_enabled() and (hidden_states.requires_grad or conv.weight.requires_grad))
        ):
            return upsample_conv(hidden_states, conv.weight, conv.bias)
        return super().forward(hidden_states, output_size, *args, **kwargs)


def fold_upsamplers(model: nn.Module) -> int:
    """Make every foldable ``Upsample2D`` in ``model`` a ``FoldedUpsample2D`` (same parameters and state-dict
    keys; the class changes, nothing is copied). Returns how many were changed."""
    changed = 0
    for module in model.modules():
        if type(module) is Upsample2D and _foldable(module):
            module.__class__ = FoldedUpsample2D
            changed += 1
    return changed
