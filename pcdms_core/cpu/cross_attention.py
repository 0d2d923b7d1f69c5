"""Cross-attention that skips the batch rows whose context is all zeros.

Classifier-free guidance in stages 2 (paper checkpoint) and 3 runs the unconditional branch with a context of
zeros (the official pipelines zero the projected tokens). The UNet's cross-attention has no bias on its keys
and values, so for such a row the keys and values are zero, every attention weight is the same, and the
attention gives exactly zero: the block's output is the output projection's bias, whatever the image. So the
query projection, the attention and the output projection of those rows are not computed; the row is filled
with the bias (divided by the module's output factor, as the full computation does). Those rows are the same
numbers bit for bit (zero times any finite weight is zero); the other rows are computed as a smaller batch,
which, as any change of batch size does, can move them by float rounding (about 1e-7 relative).

A guided cross-attention call then takes about half the time on a CPU. Used for inference on the CPU
(gradients disabled, the module in eval mode) where the conditions above hold; anything else goes to the
module's own processor.
"""

from __future__ import annotations

import torch
from torch import nn

from ..diffusers_glue import Attention



def _zero_context_gives_bias(attn: nn.Module) -> bool:
    """Whether a zero context gives exactly the output projection's bias: no bias on the keys and values, and
    nothing that would make a zero context non-zero or add to the output (norms, residual, masks)."""
    to_out = getattr(attn, "to_out", None)
    return (
        isinstance(attn, Attention) and getattr(attn, "is_cross_attention", False)
        and getattr(attn.to_k, "bias", None) is None and getattr(attn.to_v, "bias", None) is None
        and not getattr(attn, "norm_cross", False)
        and getattr(attn, "norm_k", None) is None and getattr(attn, "spatial_norm", None) is None
        and getattr(attn, "group_norm", None) is None and not getattr(attn, "residual_connection", True)
        and isinstance(to_out, nn.ModuleList) and len(to_out) >= 1 and isinstance(to_out[0], nn.Linear)
        and all(isinstance(m, nn.Dropout) for m in to_out[1:])
    )


class ZeroContextSkipping:
    """An attention processor wrapping the module's own (``inner``), see the module's docstring."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if (
            encoder_hidden_states is None or attention_mask is not None or args or kwargs
            or attn.training or torch.is_grad_enabled() or hidden_states.ndim != 3
            or hidden_states.device.type != "cpu" or encoder_hidden_states.shape[0] != hidden_states.shape[0]
        ):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        zero = ~encoder_hidden_states.flatten(1).any(dim=1)
        if not bool(zero.any()):
            return self.inner(attn, hidden_states, encoder_hidden_states, None, temb)
        proj = attn.to_out[0]
        out = hidden_states.new_empty(hidden_states.shape[0], hidden_states.shape[1], proj.out_features)
        out[zero] = 0.0 if proj.bias is None else (proj.bias.to(out.dtype) / attn.rescale_output_factor)
        rest = ~zero
        if bool(rest.any()):
            out[rest] = self.inner(attn, hidden_states[rest], encoder_hidden_states[rest], None, temb)
        return out


def skip_zero_context(model: nn.Module) -> int:
    """Give every cross-attention module of ``model`` for which a zero context gives exactly its output bias a
    ``ZeroContextSkipping`` processor around its own. Returns how many were changed."""
    changed = 0
    for module in model.modules():
        if _zero_context_gives_bias(module) and not isinstance(module.processor, ZeroContextSkipping):
            module.set_processor(ZeroContextSkipping(module.processor))
            changed += 1
    return changed
