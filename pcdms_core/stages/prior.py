"""Stage 1, the prior: sample the target image's CLIP embedding from the source embedding and both poses
(the network: ``networks.prior``)."""

from __future__ import annotations

from typing import Optional

import torch

from ..devices import model_device_dtype
from ..errors import InputError
from ..networks.prior import POSE_VECTOR_SIZE, PriorTransformer, to_clip_space
from ..seeding import SeedLike, as_generator
from .defaults import stage_defaults
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


def _as_pose_batch(pose: torch.Tensor, name: str) -> torch.Tensor:
    pose = torch.as_tensor(pose)
    if pose.ndim == 1:
        pose = pose[None]
    if pose.ndim == 3 and pose.shape[1] == 1:
        pose = pose[:, 0]
    if pose.ndim != 2 or pose.shape[-1] != POSE_VECTOR_SIZE:
        raise InputError(
            f"{name} must be a [B, 36] pose vector (18 joints x (x, y), see pose.pose_vector), got shape "
            f"{tuple(pose.shape)}"
        )
    return pose


@torch.no_grad()
def sample_prior(
    prior: PriorTransformer,
    source_embedding: torch.Tensor,
    source_pose: torch.Tensor,
    target_pose: torch.Tensor,
    *,
    steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    generator: SeedLike = None,
    noise_generator: SeedLike = None,
    latents: Optional[torch.Tensor] = None,
    num_images: int = 1,
    scheduler: Optional[str] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Sample the target CLIP image embedding, ``[B * num_images, E]`` in raw CLIP space.

    Official defaults: UnCLIP, 20 steps, no guidance (the official pipeline crashes with guidance > 1, and
    its batch test uses 0). With ``guidance_scale > 1`` the unconditional branch is the one the official code
    was written for (its never-used ``test_flag``): a zero source embedding and zero pose tokens.

    ``generator`` draws the initial latents; ``noise_generator`` the UnCLIP per-step variance noise (it
    defaults to ``generator``; the official pipeline drew that noise from torch's global RNG).
    """
    d = stage_defaults("prior")
    num_images = check_count(num_images)
    steps = check_steps(d.steps if steps is None else steps)
    guidance_scale = check_guidance(d.guidance_scale if guidance_scale is None else guidance_scale)
    scheduler = scheduler or d.scheduler
    if str(scheduler).lower() == "unclip" and steps < 2:
        raise InputError(
            f"the UnCLIP scheduler needs at least 2 steps (got {steps}); use 2 or more, or the ddim / ddpm scheduler"
        )
    device, dtype = model_device_dtype(prior)
    source_embedding = torch.as_tensor(source_embedding)
    if source_embedding.ndim == 3:
        source_embedding = source_embedding[:, 0]
    emb_dim = prior.config.embedding_dim
    if source_embedding.ndim != 2 or source_embedding.shape[-1] != emb_dim:
        raise InputError(
            f"source embedding must be [B, {emb_dim}] CLIP image_embeds, got shape {tuple(source_embedding.shape)}"
        )
    check_finite_input(source_embedding, "source CLIP embeddings")
    sp, tp = _as_pose_batch(source_pose, "source pose"), _as_pose_batch(target_pose, "target pose")
    batch = common_batch(("source embeddings", len(source_embedding)), ("source poses", len(sp)),
                         ("target poses", len(tp)))
    sp = expand_batch(broadcast(sp, batch, "source pose"), batch, num_images).to(device, dtype)
    tp = expand_batch(broadcast(tp, batch, "target pose"), batch, num_images).to(device, dtype)
    src = expand_batch(broadcast(source_embedding, batch, "source embedding"), batch, num_images).to(device, dtype)

    gen = as_generator(generator)
    noise_gen = as_generator(noise_generator) if noise_generator is not None else gen
    sched = make_scheduler(scheduler, family="prior")
    sched.set_timesteps(steps, device=device)
    x = initial_latents((batch * num_images, emb_dim), sched, gen, device, dtype, latents)

    use_cfg = guidance_scale > 1.0
    pose_tokens = prior.pose_tokens(sp[:, None], tp[:, None])
    if use_cfg:
        zeros = torch.zeros_like(pose_tokens[0])
        pose_tokens = (torch.cat([zeros, pose_tokens[0]]), torch.cat([zeros, pose_tokens[1]]))
        src = torch.cat([torch.zeros_like(src), src])

    def predict(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return prior(x_in, t, src, sp, tp, pose_tokens=pose_tokens)

    x = denoise(sched, x, predict, guidance_scale=guidance_scale, generator=noise_gen, callback=callback)
    return check_finite(to_clip_space(x, prior.config), "prior", "the target embedding")
