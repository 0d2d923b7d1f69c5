"""Stage 2, inpainting: draw the person of the source image in the target pose, as the right half of a
side-by-side canvas.

Layout (spec §2.2): the canvas is [source | target], each half S x S. The UNet input has 9 channels,
[noisy latents (4) | mask (1) | masked-image latents (4)], where the mask is 1 over the source half (keep)
and 0 over the target half (generate), and the masked image is [source | black]. The pose image
[source pose | target pose] goes through ``pose_proj`` and is added to the UNet's first feature map. The
cross-attention context is the projected DINOv2 tokens of the source.

Two checkpoints exist (spec §2.1, §2.3):

* ``paper``: the three-stage model. The prior's embedding is used twice: as a last cross-attention token and
  as the class-embedding input (added to the time embedding). Projector ``image_proj_model_p``.
* ``demo``: the released ``PCDMs_ckpt.pt``. No class embedding, no prior token. Projector
  ``image_proj_model``.

Their classifier-free guidance differs (spec §2.5) and is reproduced per variant.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from . import images as im
from . import vae as vae_ops
from .errors import InputError
from .layers import ImageProjector, PoseEncoder
from .precision import model_device_dtype
from .sampling import (
    SeedLike,
    StepCallback,
    as_generator,
    check_steps,
    denoise,
    expand_batch,
    initial_latents,
    make_scheduler,
)

PROJECTOR_NAME = {"paper": "image_proj_model_p", "demo": "image_proj_model"}

# Official sampler defaults (spec §5.2, §5.3).
DEFAULTS = {
    "paper": dict(steps=20, guidance_scale=2.0, scheduler="unipc"),
    "demo": dict(steps=50, guidance_scale=2.0, scheduler="ddim"),
}


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
    return vae_ops.encode(vae, im.to_model_range(masked), as_generator(generator))


def source_canvas(source, size: tuple[int, int]) -> torch.Tensor:
    """The uint8 [source | black] canvas, the source stretched to ``size`` = (W, H) with PIL bicubic."""
    src = im.resize_u8(im.as_uint8_batch(source), size)
    return im.side_by_side(src, torch.zeros_like(src))


def decode_canvas(vae, latents: torch.Tensor) -> InpaintResult:
    """Decode stage 2's final latents: the whole canvas, as the official code does, and its right half."""
    canvas = vae_ops.decode(vae, latents)
    half = canvas.shape[-1] // 2
    return InpaintResult(target=canvas[..., half:], canvas=canvas, latents=latents)


def size_multiple(model: InpaintModel | nn.Module, vae) -> int:
    """Pixel sizes must be multiples of this: the VAE factor times the UNet's own down-sampling."""
    unet = model.unet
    return vae_ops.downscale_factor(vae) * 2 ** (len(unet.config.block_out_channels) - 1)


def prepare_canvases(source, source_pose, target_pose, size: tuple[int, int]):
    """The official stage-2 canvases as uint8: [source | black] and [source pose | target pose].

    Every input is stretched to ``size`` = (W, H) with PIL bicubic, as the official scripts do.
    """
    masked = source_canvas(source, size)
    sp = im.resize_u8(im.as_uint8_batch(source_pose), size)
    tp = im.resize_u8(im.as_uint8_batch(target_pose), size)
    batch = masked.shape[0]
    sp = _match_batch(sp, batch, "source pose image")
    tp = _match_batch(tp, batch, "target pose image")
    poses = im.side_by_side(sp, tp)
    return masked, poses


def _match_batch(x: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise InputError(f"the {what} batch has {x.shape[0]} images but the source batch has {batch}")


def check_tokens(projector: ImageProjector, tokens: torch.Tensor) -> None:
    width = projector.config.in_dim
    if tokens.ndim != 3 or tokens.shape[-1] != width:
        raise InputError(
            f"the source features have shape {tuple(tokens.shape)} but this checkpoint's projector takes "
            f"[B, tokens, {width}] (DINOv2-giant last_hidden_state has width 1536): load the matching image encoder"
        )


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
    size: tuple[int, int] = (512, 512),
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
    poses are rendered skeletons, see ``pose.render_pose``). ``source_tokens`` are the DINOv2
    ``last_hidden_state`` of the source (``encoders.ImageEncoder``), ``prior_embedding`` the prior's
    output (paper variant). ``size`` is (W, H) of one half.

    Randomness, in the official order: the VAE posterior sample of [source | black], then the initial
    latents, both from ``generator``. ``masked_latents`` (already scaled) skips the first draw.
    """
    variant = model.variant
    d = DEFAULTS[variant]
    steps = check_steps(d["steps"] if steps is None else steps)
    guidance_scale = d["guidance_scale"] if guidance_scale is None else float(guidance_scale)
    scheduler = scheduler or d["scheduler"]
    if not model.uses_prior and prior_embedding is not None:
        raise InputError("the demo stage-2 checkpoint takes no prior embedding; leave it out (or load a paper checkpoint)")
    size = im.check_size(size, size_multiple(model, vae), "stage-2 size")
    device, dtype = model_device_dtype(model)
    gen = as_generator(generator)

    masked_u8, poses_u8 = prepare_canvases(source, source_pose, target_pose, size)
    batch = masked_u8.shape[0]
    if model.uses_prior:
        if prior_embedding is None:
            raise InputError("the paper stage-2 model needs the prior's target embedding (run the prior first)")
        prior_embedding = prior_embedding.reshape(prior_embedding.shape[0], -1)
        prior_embedding = _match_batch(prior_embedding, batch, "prior embedding").to(device, dtype)
        if prior_embedding.shape[-1] != model.image_proj.config.out_dim:
            raise InputError(
                f"the prior embedding has {prior_embedding.shape[-1]} values but this stage-2 model expects "
                f"{model.image_proj.config.out_dim}: use the prior checkpoint that belongs to it"
            )
    check_tokens(model.image_proj, source_tokens)

    if masked_latents is None:
        masked_latents = vae_ops.encode(vae, im.to_model_range(masked_u8), gen)  # as ``encode_canvas``
    masked_latents = masked_latents.to(device, dtype)
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

    tokens = _match_batch(source_tokens, batch, "source token").to(device, dtype)
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
    if not decode:
        return InpaintResult(target=None, canvas=None, latents=x)
    return decode_canvas(vae, x)
