"""The stage-2 network (inpainting): UNet + pose encoder + image projector.

Layout (docs/faithfulness.md, Stage 2): the canvas is [source | target], each half S x S. The UNet input has 9 channels,
[noisy latents (4) | mask (1) | masked-image latents (4)], where the mask is 1 over the source half (keep)
and 0 over the target half (generate), and the masked image is [source | black]. The pose image
[source pose | target pose] goes through ``pose_proj`` and is added to the UNet's first feature map. The
cross-attention context is the projected DINOv2 tokens of the source.

Two checkpoints exist:

* ``paper``: the three-stage model. The prior's embedding is used twice: as a last cross-attention token and
  as the class-embedding input (added to the time embedding). Projector ``image_proj_model_p``.
* ``noprior``: the released ``PCDMs_ckpt.pt``. No class embedding, no prior token. Projector
  ``image_proj_model``.

"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from ..errors import InputError
from .layers import ImageProjector, PoseEncoder

PROJECTOR_NAME = {"paper": "image_proj_model_p", "noprior": "image_proj_model"}


class InpaintModel(nn.Module):
    """UNet + pose encoder + image projector, named like the official checkpoint's prefixes."""

    stage = "inpaint"

    def __init__(self, unet: nn.Module, pose_proj: PoseEncoder, image_proj: ImageProjector, variant: str):
        super().__init__()
        if variant not in PROJECTOR_NAME:
            raise ValueError(f"unknown stage-2 variant {variant!r}")
        self.variant = variant
        self.unet = unet
        self.pose_proj = pose_proj
        self.add_module(PROJECTOR_NAME[variant], image_proj)
        self._pose_features: Optional[torch.Tensor] = None
        unet.conv_in.register_forward_hook(self._add_pose)

    @property
    def image_proj(self) -> ImageProjector:
        return getattr(self, PROJECTOR_NAME[self.variant])

    @property
    def uses_prior(self) -> bool:
        return self.variant == "paper"

    def _add_pose(self, module, args, output):
        # The official UNet adds the pose features to conv_in's output, before the down blocks.
        if self._pose_features is None:
            return output
        return output + self._pose_features

    @contextlib.contextmanager
    def _pose(self, features: torch.Tensor):
        self._pose_features = features
        try:
            yield
        finally:
            self._pose_features = None

    def context(self, source_tokens: torch.Tensor, prior_embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cross-attention context: projected source tokens, plus the prior embedding as a last token (paper)."""
        ctx = self.image_proj(source_tokens)
        if self.uses_prior:
            if prior_embedding is None:
                raise InputError("the paper stage-2 model needs the prior's target embedding (run the prior first)")
            ctx = torch.cat([ctx, prior_embedding.reshape(prior_embedding.shape[0], 1, -1).to(ctx.dtype)], dim=1)
        return ctx

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        context: torch.Tensor,
        pose_features: torch.Tensor,
        class_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Noise prediction for the 9-channel ``sample``. ``class_labels`` is the ``[B, 1024]`` prior embedding
        (paper variant only); ``pose_features`` may have batch 1 (broadcast)."""
        if class_labels is not None and class_labels.ndim == 3:
            class_labels = class_labels[:, 0]
        with self._pose(pose_features):
            return self.unet(sample, timestep, encoder_hidden_states=context, class_labels=class_labels).sample
