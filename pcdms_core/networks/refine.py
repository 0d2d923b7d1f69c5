"""The stage-3 network (refining): a stock SD 2.1-base UNet with 8 input channels, [noisy latents (4) | VAE
latents of the coarse image (4)], cross-attending to the projected DINOv2 tokens of the source image
(``image_proj_model_p``). No pose, no mask, no prior token."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ImageProjector


class RefineModel(nn.Module):
    """UNet + image projector, named like the official checkpoint's prefixes (``unet.``, ``image_proj_model_p.``)."""

    stage = "refine"
    variant = "refine"

    def __init__(self, unet: nn.Module, image_proj: ImageProjector):
        super().__init__()
        self.unet = unet
        self.image_proj_model_p = image_proj

    @property
    def image_proj(self) -> ImageProjector:
        return self.image_proj_model_p

    def forward(self, sample: torch.Tensor, timestep, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=context).sample
