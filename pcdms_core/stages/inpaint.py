"""Stage 2, inpainting: draw the person of the source image in the target pose, as the right half of a
side-by-side canvas [source | target] (the network and its two variants: ``networks.inpaint``). Classifier-free
guidance differs between the variants and is reproduced for each (docs/faithfulness.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import images as im
from ..networks import vae as vae_ops
from ..errors import InputError
from ..networks.inpaint import InpaintModel
from ..networks.layers import ImageProjector
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
    common_batch,
    denoise,
    expand_batch,
    initial_latents,
    make_scheduler,
)


@dataclass
class InpaintResult:
    target: Optional[torch.Tensor]  # [N, 3, H, W] in [0, 1]: the right half, the coarse target image
    canvas: Optional[torch.Tensor]  # [N, 3, H, 2W] in [0, 1]: the whole decoded canvas
    latents: torch.Tensor  # final latents of the whole canvas
    # (``target`` and ``canvas`` are None when ``sample_inpaint`` was told not to decode: see ``decode_canvas``)


def encode_canvas(vae, source, size: tuple[int, int], generator: SeedLike = None) -> torch.Tensor:
    """The scaled VAE latents of the [source | black] canvas, drawn from the posterior with ``generator``: the
    first random draw of stage 2. Encoding before the UNet is loaded (and passing the same generator to
    ``sample_inpaint`` as ``masked_latents`` / ``generator``) gives the same numbers with less held at once."""
    masked = source_canvas(source, im.check_size(size, vae_ops.downscale_factor(vae), "stage-2 size"))
    latents = vae_ops.encode(vae, im.to_model_range(masked), as_generator(generator))
    return check_finite(latents, "inpaint", "the VAE latents of the [source | black] canvas", vae=True)


def source_canvas(source, size: tuple[int, int]) -> torch.Tensor:
    """The uint8 [source | black] canvas, the source stretched to ``size`` = (W, H) with PIL bicubic."""
    src = im.resize_u8(im.as_uint8_batch(source), size)
    return im.side_by_side(src, torch.zeros_like(src))


def decode_canvas(vae, latents: torch.Tensor) -> InpaintResult:
    """Decode stage 2's final latents: the whole canvas, as the official code does, and its right half."""
    canvas = check_finite(vae_ops.decode(vae, latents), "inpaint", "the decoded canvas", vae=True)
    half = canvas.shape[-1] // 2
    return InpaintResult(target=canvas[..., half:], canvas=canvas, latents=latents)


def size_multiple(model: InpaintModel, vae) -> int:
    """Each half's width and height must be multiples of this: the VAE's factor and the pose encoder's (8 for
    the official models). The UNet takes latent grids that do not halve evenly through its levels, as the
    official pipelines do (its up-blocks upsample to the size of the matching skip connection)."""
    return math.lcm(vae_ops.downscale_factor(vae), model.pose_proj.downscale)


def prepare_canvases(source, source_pose, target_pose, size: tuple[int, int]):
    """The official stage-2 canvases as uint8: [source | black] and [source pose | target pose].

    Every input is stretched to ``size`` = (W, H) with PIL bicubic, as the official scripts do (pose images that
    the stretch distorts a lot give a ``PCDMsWarning``; the source is checked where it is encoded).
    """
    src, sp, tp = (im.as_uint8_batch(x) for x in (source, source_pose, target_pose))
    for name, poses in (("source pose image", sp), ("target pose image", tp)):
        im.warn(im.size_warnings(im.image_size(poses), size, name))
    src, sp, tp = (im.resize_u8(x, size) for x in (src, sp, tp))
    batch = common_batch(("source images", len(src)), ("source poses", len(sp)), ("target poses", len(tp)))
    src = broadcast(src, batch, "source image")
    masked = im.side_by_side(src, torch.zeros_like(src))
    poses = im.side_by_side(broadcast(sp, batch, "source pose image"), broadcast(tp, batch, "target pose image"))
    return masked, poses


def check_tokens(projector: ImageProjector, tokens: torch.Tensor) -> None:
    width = projector.config.in_dim
    if tokens.ndim != 3 or tokens.shape[-1] != width:
        raise InputError(
            f"the source features have shape {tuple(tokens.shape)} but this checkpoint's projector takes "
            f"[B, tokens, {width}] (DINOv2-giant last_hidden_state has width 1536): load the matching image encoder"
        )
    check_finite_input(tokens, "source features (DINOv2 tokens)")


def keep_mask(latent_h: int, latent_w: int, batch: int, device, dtype) -> torch.Tensor:
    """1 over the left (source) half, 0 over the right (target) half."""
    mask = torch.zeros(batch, 1, latent_h, latent_w, device=device, dtype=dtype)
    mask[..., : latent_w // 2] = 1
    return mask


@torch.no_grad()
def sample_inpaint(
    model: InpaintModel,
    vae,
    source,
    source_pose,
    target_pose,
    source_tokens: torch.Tensor,
    prior_embedding: Optional[torch.Tensor] = None,
    *,
    size: tuple[int, int] = OFFICIAL_SIZE,
    steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    guidance_rescale: float = 0.0,
    scheduler: Optional[str] = None,
    generator: SeedLike = None,
    latents: Optional[torch.Tensor] = None,
    masked_latents: Optional[torch.Tensor] = None,
    num_images: int = 1,
    callback: Optional[StepCallback] = None,
    decode: bool = True,
) -> InpaintResult:
    """Run stage 2 and decode (``decode=False``: only the latents, for ``decode_canvas`` once the UNet is
    freed). Defaults are the official ones for the model's variant.

    ``source``, ``source_pose`` and ``target_pose`` are image batches (see ``images.as_uint8_batch``; the
    poses are rendered skeletons, see ``pose.keypoints.render_pose``). ``source_tokens`` are the DINOv2
    ``last_hidden_state`` of the source (``networks.encoders.ImageEncoder``), ``prior_embedding`` the prior's
    output (paper variant). ``size`` is (W, H) of one half.

    Randomness, in the official order: the VAE posterior sample of [source | black], then the initial
    latents, both from ``generator``. ``masked_latents`` (already scaled) skips the first draw.
    """
    variant = model.variant
    num_images = check_count(num_images)
    d = stage_defaults(variant)
    steps = check_steps(d.steps if steps is None else steps)
    guidance_scale = check_guidance(d.guidance_scale if guidance_scale is None else guidance_scale)
    guidance_rescale = check_guidance(guidance_rescale, "guidance rescale")
    scheduler = scheduler or d.scheduler
    if not model.uses_prior and prior_embedding is not None:
        raise InputError("the no-prior stage-2 checkpoint takes no prior embedding; leave it out (or load a paper checkpoint)")
    size = im.check_size(size, size_multiple(model, vae), "stage-2 size")
    device, dtype = model_device_dtype(model)
    gen = as_generator(generator)

    masked_u8, poses_u8 = prepare_canvases(source, source_pose, target_pose, size)
    named = [("source images and poses", masked_u8.shape[0]), ("source tokens", source_tokens.shape[0])]
    if model.uses_prior and prior_embedding is not None:
        named.append(("prior embeddings", prior_embedding.shape[0]))
    batch = common_batch(*named)
    masked_u8, poses_u8 = broadcast(masked_u8, batch, "source image"), broadcast(poses_u8, batch, "pose image")
    if model.uses_prior:
        if prior_embedding is None:
            raise InputError("the paper stage-2 model needs the prior's target embedding (run the prior first)")
        prior_embedding = check_finite_input(prior_embedding, "prior embeddings").reshape(prior_embedding.shape[0], -1)
        prior_embedding = broadcast(prior_embedding, batch, "prior embedding").to(device, dtype)
        if prior_embedding.shape[-1] != model.image_proj.config.out_dim:
            raise InputError(
                f"the prior embedding has {prior_embedding.shape[-1]} values but this stage-2 model expects "
                f"{model.image_proj.config.out_dim}: use the prior checkpoint that belongs to it"
            )
    check_tokens(model.image_proj, source_tokens)

    if masked_latents is None:
        masked_latents = vae_ops.encode(vae, im.to_model_range(masked_u8), gen)  # as ``encode_canvas``
        check_finite(masked_latents, "inpaint", "the VAE latents of the [source | black] canvas", vae=True)
    masked_latents = check_finite_input(masked_latents, "masked-image latents").to(device, dtype)
    _, lc, lh, lw = masked_latents.shape
    pose_features = model.pose_proj(im.to_model_range(poses_u8).to(device, dtype))
    if tuple(pose_features.shape[-2:]) != (lh, lw):
        raise InputError(
            f"the pose encoder gives a {tuple(pose_features.shape[-2:])} grid but the VAE latents are {(lh, lw)}: "
            f"this VAE down-samples by {vae_ops.downscale_factor(vae)}, the checkpoint's pose encoder by "
            f"{model.pose_proj.downscale}; use the VAE the checkpoint was trained with"
        )

    sched = make_scheduler(scheduler)
    sched.set_timesteps(steps, device=device)
    n = batch * num_images
    x = initial_latents((n, lc, lh, lw), sched, gen, device, dtype, latents)

    tokens = broadcast(source_tokens, batch, "source token").to(device, dtype)
    context = expand_batch(model.context(tokens, prior_embedding), batch, num_images)
    labels = expand_batch(prior_embedding, batch, num_images) if model.uses_prior else None
    mask = keep_mask(lh, lw, n, device, dtype)
    masked = expand_batch(masked_latents, batch, num_images)
    pose_features = expand_batch(pose_features, batch, num_images)

    use_cfg = guidance_scale > 1.0
    if use_cfg:
        if variant == "paper":
            # Paper pipeline: zero context (after projection) and a zero class label; pose, mask and masked
            # latents unchanged.
            uncond_ctx = torch.zeros_like(context)
            labels = torch.cat([torch.zeros_like(labels), labels])
        else:
            # Demo pipeline: the projector applied to zero DINOv2 tokens.
            uncond_ctx = expand_batch(model.image_proj(torch.zeros_like(tokens)), batch, num_images)
        context = torch.cat([uncond_ctx, context])
        mask = torch.cat([mask, mask])
        masked = torch.cat([masked, masked])
        pose_features = torch.cat([pose_features, pose_features])

    def predict(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(torch.cat([x_in, mask, masked], dim=1), t, context, pose_features, labels)

    x = denoise(
        sched, x, predict, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
        generator=gen, callback=callback,
    )
    check_finite(x, "inpaint", "its latents")
    if not decode:
        return InpaintResult(target=None, canvas=None, latents=x)
    return decode_canvas(vae, x)
