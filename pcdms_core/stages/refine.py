"""Stage 3, refining: restore texture and detail of stage 2's coarse target image (the network:
``networks.refine``).

Guidance (docs/faithfulness.md, Stage 3): the unconditional branch has a zero context and zero coarse-image
latents, and the official batch test passes ``guidance_rescale`` equal to ``guidance_scale``;
``guidance_rescale=None`` keeps that pairing. The paper's numbers were most likely made without guidance,
which is the default here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import images as im
from ..networks import vae as vae_ops
from .inpaint import check_tokens
from ..networks.refine import RefineModel
from ..devices import model_device_dtype
from ..seeding import SeedLike, as_generator
from .defaults import OFFICIAL_SIZE, stage_defaults
from .loop import (
    StepCallback,
    broadcast,
    check_count,
    check_finite,
    check_finite_input,
    check_guidance,
    check_steps,
    check_strength,
    denoise,
    expand_batch,
    initial_latents,
    make_scheduler,
    noised_start,
    start_part_way,
)


@dataclass
class RefineResult:
    images: Optional[torch.Tensor]  # [N, 3, H, W] in [0, 1]; None when ``sample_refine`` was told not to decode
    latents: torch.Tensor


def encode_coarse(vae, coarse, size: tuple[int, int], generator: SeedLike = None) -> torch.Tensor:
    """The scaled VAE latents of the coarse image stretched to ``size`` (PIL bicubic on 8-bit pixels), drawn
    from the posterior with ``generator``: the first random draw of stage 3 (see ``sample_refine``'s
    ``coarse_latents``)."""
    coarse_u8 = im.resize_u8(im.as_uint8_batch(coarse), im.check_size(size, vae_ops.downscale_factor(vae), "stage-3 size"))
    latents = vae_ops.encode(vae, im.to_model_range(coarse_u8), as_generator(generator))
    return check_finite(latents, "refine", "the VAE latents of the coarse image", vae=True)


@torch.no_grad()
def sample_refine(
    model: RefineModel,
    vae,
    coarse,
    source_tokens: torch.Tensor,
    *,
    size: tuple[int, int] = OFFICIAL_SIZE,
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
    test does with the PNG stage 2 wrote (of another size, with a ``PCDMsWarning``). Randomness, in the official order: the VAE posterior sample of the
    coarse image, then the initial latents, both from ``generator``. ``coarse_latents`` (already scaled)
    skips the first draw (see ``encode_coarse``); ``decode=False`` returns only the latents. With several
    coarse images and ``num_images`` > 1, each coarse image gets ``num_images`` refinements, in order.

    ``strength`` 1 (the official way) starts from pure noise. Below 1 it starts from the coarse latents noised
    to the level ``strength`` of the way up the schedule and runs only the last ``round(steps * strength)``
    steps (img2img, as diffusers counts it); ``latents`` is then the noise that is added.
    """
    d = stage_defaults("refine")
    num_images = check_count(num_images)
    steps = check_steps(d.steps if steps is None else steps)
    strength = check_strength(strength)
    guidance_scale = check_guidance(d.guidance_scale if guidance_scale is None else guidance_scale)
    rescale = guidance_scale if guidance_rescale is None else check_guidance(guidance_rescale, "guidance rescale")
    scheduler = scheduler or d.scheduler
    size = im.check_size(size, vae_ops.downscale_factor(vae), "stage-3 size")
    device, dtype = model_device_dtype(model)
    gen = as_generator(generator)

    coarse_u8 = im.as_uint8_batch(coarse)
    im.warn(im.resize_back_warnings(im.image_size(coarse_u8), size, "image to refine"))
    coarse_u8 = im.resize_u8(coarse_u8, size)
    batch = coarse_u8.shape[0]
    check_tokens(model.image_proj, source_tokens)
    tokens = broadcast(source_tokens, batch, "source token").to(device, dtype)
    if coarse_latents is None:
        coarse_latents = encode_coarse(vae, coarse_u8, size, gen)
    coarse_latents = check_finite_input(coarse_latents, "coarse-image latents").to(device, dtype)
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
    check_finite(x, "refine", "its latents")
    images = check_finite(vae_ops.decode(vae, x), "refine", "the decoded image", vae=True) if decode else None
    return RefineResult(images=images, latents=x)
