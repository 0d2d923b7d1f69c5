"""Stage 3, refining: restore texture and detail of stage 2's coarse target image (spec §3).

A stock SD 2.1-base UNet with 8 input channels, [noisy latents (4) | VAE latents of the coarse image (4)],
cross-attending to the projected DINOv2 tokens of the source image (``image_proj_model_p``). No pose, no
mask, no prior token.

Guidance (spec §3): the unconditional branch has a zero context and zero coarse-image latents, and the
official batch test passes ``guidance_rescale`` equal to ``guidance_scale``; ``guidance_rescale=None`` keeps
that pairing. The paper's numbers were most likely made without guidance, which is the default here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from . import images as im
from . import vae as vae_ops
from .inpaint import _match_batch, check_tokens, size_multiple
from .layers import ImageProjector
from .precision import model_device_dtype
from .sampling import (
    SeedLike,
    StepCallback,
    as_generator,
    check_steps,
    check_strength,
    denoise,
    expand_batch,
    initial_latents,
    make_scheduler,
    noised_start,
    start_part_way,
)

DEFAULTS = dict(steps=20, guidance_scale=1.0, scheduler="unipc")


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


@dataclass
class RefineResult:
    images: Optional[torch.Tensor]  # [N, 3, H, W] in [0, 1]; None when ``sample_refine`` was told not to decode
    latents: torch.Tensor


def encode_coarse(vae, coarse, size: tuple[int, int], generator: SeedLike = None) -> torch.Tensor:
    """The scaled VAE latents of the coarse image stretched to ``size`` (PIL bicubic on 8-bit pixels), drawn
    from the posterior with ``generator``: the first random draw of stage 3 (see ``sample_refine``'s
    ``coarse_latents``)."""
    coarse_u8 = im.resize_u8(im.as_uint8_batch(coarse), im.check_size(size, vae_ops.downscale_factor(vae), "stage-3 size"))
    return vae_ops.encode(vae, im.to_model_range(coarse_u8), as_generator(generator))


@torch.no_grad()
def sample_refine(
    model: RefineModel,
    vae,
    coarse,
    source_tokens: torch.Tensor,
    *,
    size: tuple[int, int] = (512, 512),
    steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    guidance_rescale: Optional[float] = None,
    scheduler: Optional[str] = None,
    generator: SeedLike = None,
    latents: Optional[torch.Tensor] = None,
    coarse_latents: Optional[torch.Tensor] = None,
    num_images: int = 1,
    strength: float = 1.0,
    callback: Optional[StepCallback] = None,
    decode: bool = True,
) -> RefineResult:
    """Refine ``coarse`` (stage 2's target half, any image form) into ``[N, 3, H, W]`` images.

    ``coarse`` is stretched to ``size`` = (W, H) with PIL bicubic on 8-bit pixels, as the official batch
    test does with the PNG stage 2 wrote. Randomness, in the official order: the VAE posterior sample of the
    coarse image, then the initial latents, both from ``generator``. ``coarse_latents`` (already scaled)
    skips the first draw (see ``encode_coarse``); ``decode=False`` returns only the latents. With several
    coarse images and ``num_images`` > 1, each coarse image gets ``num_images`` refinements, in order.

    ``strength`` 1 (the official way) starts from pure noise. Below 1 it starts from the coarse latents noised
    to the level ``strength`` of the way up the schedule and runs only the last ``round(steps * strength)``
    steps (img2img, as diffusers counts it); ``latents`` is then the noise that is added.
    """
    steps = check_steps(DEFAULTS["steps"] if steps is None else steps)
    strength = check_strength(strength)
    guidance_scale = DEFAULTS["guidance_scale"] if guidance_scale is None else float(guidance_scale)
    rescale = guidance_scale if guidance_rescale is None else float(guidance_rescale)
    scheduler = scheduler or DEFAULTS["scheduler"]
    size = im.check_size(size, size_multiple(model, vae), "stage-3 size")
    device, dtype = model_device_dtype(model)
    gen = as_generator(generator)

    coarse_u8 = im.resize_u8(im.as_uint8_batch(coarse), size)
    batch = coarse_u8.shape[0]
    check_tokens(model.image_proj, source_tokens)
    tokens = _match_batch(source_tokens, batch, "source token").to(device, dtype)
    if coarse_latents is None:
        coarse_latents = encode_coarse(vae, coarse_u8, size, gen)
    coarse_latents = coarse_latents.to(device, dtype)
    _, lc, lh, lw = coarse_latents.shape

    sched = make_scheduler(scheduler)
    sched.set_timesteps(steps, device=device)
    start = start_part_way(sched, steps, strength)
    n = batch * num_images
    cond = expand_batch(coarse_latents, batch, num_images)
    if strength < 1.0:
        x = noised_start(sched, cond, start, gen, latents)
    else:
        x = initial_latents((n, lc, lh, lw), sched, gen, device, dtype, latents)

    context = expand_batch(model.image_proj(tokens), batch, num_images)
    if guidance_scale > 1.0:
        context = torch.cat([torch.zeros_like(context), context])
        cond = torch.cat([torch.zeros_like(cond), cond])

    def predict(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(torch.cat([x_in, cond], dim=1), t, context)

    x = denoise(
        sched, x, predict, guidance_scale=guidance_scale, guidance_rescale=rescale, generator=gen, callback=callback,
        start=start,
    )
    return RefineResult(images=vae_ops.decode(vae, x) if decode else None, latents=x)
