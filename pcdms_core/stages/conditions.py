"""The conditions of stages 2 and 3 as tensors, for hosts that run their own sampler on the UNets (ComfyUI's
KSampler on the native path): everything ``sample_inpaint`` and ``sample_refine`` feed the UNet besides the
noisy latents, for the conditional and the unconditional branch, with each variant's official unconditional
branch (docs/faithfulness.md):

* stage 2, paper: zero context (after projection) and a zero class label; pose, mask and masked latents kept;
* stage 2, no-prior: the projector applied to zero DINOv2 tokens; the rest kept;
* stage 3: zero context and zero coarse-image latents.

The UNet input is ``[noisy latents | concat]``; the pose image goes through the checkpoint's pose encoder and is
added to the UNet's first feature map. Nothing here samples: the random draw is the VAE posterior sample of the
canvas (stage 2) or of the coarse image (stage 3), as in the samplers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import images as im
from ..errors import InputError
from ..networks import vae as vae_ops
from ..networks.layers import ImageProjector
from ..seeding import SeedLike, as_generator
from .inpaint import check_tokens, keep_mask, prepare_canvases
from .loop import broadcast, check_finite, check_finite_input, common_batch, expand_batch
from .refine import encode_coarse


@dataclass
class StageConditions:
    """What a stage's UNet is given besides the noisy latents, for both guidance branches (batch-first)."""

    context: torch.Tensor  # [N, T, D] cross-attention context of the conditional branch
    uncond_context: torch.Tensor
    concat: torch.Tensor  # [N, C, h, w] channels after the noisy latents (stage 2: mask + masked latents)
    uncond_concat: torch.Tensor
    latent_shape: tuple[int, int, int, int]  # (N, channels, h, w) of the noisy latents (scaled VAE latents)
    pose: Optional[torch.Tensor] = None  # [N, 3, H, 2W] pose canvas in [-1, 1] (stage 2)
    class_label: Optional[torch.Tensor] = None  # [N, D] prior embedding (paper stage 2)
    uncond_class_label: Optional[torch.Tensor] = None

    def to(self, device) -> "StageConditions":
        moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()}
        return StageConditions(**moved)


def _project(projector: ImageProjector, tokens: torch.Tensor) -> torch.Tensor:
    p = next(projector.parameters())
    return projector(tokens.to(p.device, p.dtype)).float()


@torch.no_grad()
def inpaint_conditions(
    projector: ImageProjector,
    variant: str,
    vae,
    source,
    source_pose,
    target_pose,
    source_tokens: torch.Tensor,
    prior_embedding: Optional[torch.Tensor] = None,
    *,
    size: tuple[int, int],
    pose_downscale: int,
    generator: SeedLike = None,
    masked_latents: Optional[torch.Tensor] = None,
    num_images: int = 1,
) -> StageConditions:
    """Stage 2's conditions (``variant`` "paper" or "noprior"), as ``sample_inpaint`` builds them.

    ``projector`` is the checkpoint's image projector, ``pose_downscale`` its pose encoder's factor (each half's
    size must be a multiple of it and of the VAE's). ``masked_latents`` (scaled) skips the VAE's posterior draw.
    Each source's conditions are repeated ``num_images`` times, in order."""
    if variant not in ("paper", "noprior"):
        raise InputError(f"stage-2 conditions are for the paper or no-prior checkpoint, not {variant!r}")
    if variant == "noprior" and prior_embedding is not None:
        raise InputError("the no-prior stage-2 checkpoint takes no prior embedding; leave it out (or load a paper checkpoint)")
    if variant == "paper" and prior_embedding is None:
        raise InputError("the paper stage-2 model needs the prior's target embedding (run the prior first)")
    size = im.check_size(size, math.lcm(vae_ops.downscale_factor(vae), pose_downscale), "stage-2 size")
    check_tokens(projector, source_tokens)

    masked_u8, poses_u8 = prepare_canvases(source, source_pose, target_pose, size)
    named = [("source images and poses", masked_u8.shape[0]), ("source tokens", source_tokens.shape[0])]
    if prior_embedding is not None:
        prior_embedding = prior_embedding.reshape(prior_embedding.shape[0], -1).float()
        named.append(("prior embeddings", prior_embedding.shape[0]))
    batch = common_batch(*named)
    masked_u8, poses_u8 = broadcast(masked_u8, batch, "source image"), broadcast(poses_u8, batch, "pose image")
    if masked_latents is None:
        masked_latents = check_finite(vae_ops.encode(vae, im.to_model_range(masked_u8), as_generator(generator)),
                                      "inpaint", "the VAE latents of the source canvas", vae=True)
    masked_latents = broadcast(check_finite_input(masked_latents, "masked latents").float().cpu(), batch,
                               "masked latents")
    _, lc, lh, lw = masked_latents.shape

    tokens = broadcast(source_tokens, batch, "source token")
    context = _project(projector, tokens).cpu()
    label = None
    if prior_embedding is not None:
        prior_embedding = broadcast(prior_embedding, batch, "prior embedding").cpu()
        if prior_embedding.shape[-1] != projector.config.out_dim:
            raise InputError(
                f"the prior embedding has {prior_embedding.shape[-1]} values but this stage-2 model expects "
                f"{projector.config.out_dim}: use the prior checkpoint that belongs to it"
            )
        context = torch.cat([context, prior_embedding[:, None]], dim=1)
        label = prior_embedding
    if variant == "paper":
        uncond_context = torch.zeros_like(context)
    else:
        uncond_context = _project(projector, torch.zeros_like(tokens)).cpu()

    concat = torch.cat([keep_mask(lh, lw, batch, "cpu", torch.float32), masked_latents], dim=1)
    pose = im.to_model_range(poses_u8).float().cpu()

    def rep(x):
        return None if x is None else expand_batch(x, batch, num_images).contiguous()

    return StageConditions(
        context=rep(context), uncond_context=rep(uncond_context), concat=rep(concat), uncond_concat=rep(concat),
        latent_shape=(batch * num_images, lc, lh, lw), pose=rep(pose), class_label=rep(label),
        uncond_class_label=None if label is None else torch.zeros_like(rep(label)),
    )


@torch.no_grad()
def refine_conditions(
    projector: ImageProjector,
    vae,
    coarse,
    source_tokens: torch.Tensor,
    *,
    size: tuple[int, int],
    generator: SeedLike = None,
    coarse_latents: Optional[torch.Tensor] = None,
    num_images: int = 1,
) -> StageConditions:
    """Stage 3's conditions, as ``sample_refine`` builds them: the coarse image stretched to ``size`` and encoded
    (``coarse_latents``, scaled, skips that), the projected source tokens, and zeros for the unconditional branch.
    One source may serve several coarse images, or each image has its own source."""
    size = im.check_size(size, vae_ops.downscale_factor(vae), "stage-3 size")
    check_tokens(projector, source_tokens)
    coarse_u8 = im.as_uint8_batch(coarse)
    im.warn(im.resize_back_warnings(im.image_size(coarse_u8), size, "image to refine"))
    coarse_u8 = im.resize_u8(coarse_u8, size)
    batch = coarse_u8.shape[0]
    common_batch(("coarse images", batch), ("source tokens", source_tokens.shape[0]))
    if coarse_latents is None:
        coarse_latents = encode_coarse(vae, coarse_u8, size, generator)  # checked finite there
    coarse_latents = broadcast(check_finite_input(coarse_latents, "coarse latents").float().cpu(), batch,
                               "coarse latents")
    _, lc, lh, lw = coarse_latents.shape
    context = _project(projector, broadcast(source_tokens, batch, "source token")).cpu()

    def rep(x):
        return expand_batch(x, batch, num_images).contiguous()

    return StageConditions(
        context=rep(context), uncond_context=torch.zeros_like(rep(context)), concat=rep(coarse_latents),
        uncond_concat=torch.zeros_like(rep(coarse_latents)), latent_shape=(batch * num_images, lc, lh, lw),
    )
