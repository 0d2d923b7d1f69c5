"""Image encoders with the official PCDMs preprocessing (docs/faithfulness.md, Encoders and preprocessing).

* The prior reads the CLIP ViT-H/14 ``image_embeds`` (1024 values) of the source.
* Stages 2 and 3 read the DINOv2-giant ``last_hidden_state`` (257 tokens x 1536) of the source.

Both encoders get the *same* pixels: the image stretched to the stage's working size (512 x 512 by default)
with PIL bicubic, resized so its short side is 224 (PIL bicubic), centre-cropped to 224 x 224, scaled by
1/255 in float64, then normalised with the OpenAI CLIP mean and std in float32. That is transformers
4.3x's ``CLIPImageProcessor()``, written out here so it does not drift when transformers changes its image
backend, and it is also what the official code feeds DINOv2 (not DINOv2's ImageNet statistics).

The networks themselves are in ``vit``, their loading in ``loading.encoders`` (transformers 4.x weight layout, 4.3x's DINOv2 position
interpolation).
"""

from __future__ import annotations

from typing import Optional

import torch
from PIL import Image
from torch import nn

from .. import images as im
from ..devices import model_device_dtype

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP = 224


def _short_side_size(width: int, height: int, short: int = CROP) -> tuple[int, int]:
    """(W, H) with the short side ``short`` and the long side scaled and truncated (transformers 4.3x)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def clip_crop_u8(images, stretch: Optional[tuple[int, int]] = (512, 512)) -> torch.Tensor:
    """uint8 ``[B, 3, 224, 224]``: optional stretch to ``stretch`` = (W, H), short side to 224, centre crop."""
    u8 = im.as_uint8_batch(images)
    if stretch is not None:
        u8 = im.resize_u8(u8, tuple(stretch))
    out = []
    for img in im.to_pil(u8):
        w, h = _short_side_size(*img.size)
        img = img.resize((w, h), Image.BICUBIC)
        top, left = (h - CROP) // 2, (w - CROP) // 2
        out.append(img.crop((left, top, left + CROP, top + CROP)))
    return im.as_uint8_batch(out)


def clip_normalize(crop_u8: torch.Tensor) -> torch.Tensor:
    """uint8 crops to model pixels: x (1/255) in float64, to float32, minus mean, over std (float32)."""
    x = (crop_u8.double() * (1 / 255)).float()
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(images, stretch: Optional[tuple[int, int]] = (512, 512)) -> torch.Tensor:
    """The official encoder input ``[B, 3, 224, 224]`` float32 for any accepted image form."""
    return clip_normalize(clip_crop_u8(images, stretch))


class ImageEncoder(nn.Module):
    """CLIP's vision tower (``kind="clip"``, gives ``image_embeds``) or DINOv2 (``kind="dinov2"``, gives
    ``last_hidden_state``), with the official preprocessing."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        if kind not in ("clip", "dinov2"):
            raise ValueError(f"unknown encoder kind {kind!r}")
        self.kind = kind
        self.model = model

    @property
    def output_dim(self) -> int:
        return self.model.output_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        device, dtype = model_device_dtype(self.model)
        return self.model(pixel_values.to(device=device, dtype=dtype))

    @torch.no_grad()
    def encode(self, images, stretch: Optional[tuple[int, int]] = (512, 512)) -> torch.Tensor:
        """Encode an image batch: CLIP ``[B, 1024]`` embeddings or DINOv2 ``[B, 257, 1536]`` tokens."""
        return self(preprocess(images, stretch))
