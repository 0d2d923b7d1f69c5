"""A linear latent -> RGB map fitted to one VAE, for cheap previews of the latents while a stage samples.

ComfyUI previews latents with a fixed linear map per latent format (SD 1.5's for every 4-channel latent);
a VAE with another latent space (the bundled demo VAE) gets wrong colours from it. Fitting the map to the
VAE's own encoder and decoder gives previews whose colours follow what the VAE will decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .vae import decode, encode


@torch.no_grad()
def latent_rgb_factors(vae, size: int = 64, count: int = 8, seed: int = 0) -> tuple[list[list[float]], list[float]]:
    """Least squares ``rgb ~ z @ W + b`` from scaled latents (as the stages sample them) to the decoded image
    averaged over each latent cell, in [-1, 1].

    Fitted on ``count`` smooth random colour fields of ``size`` pixels, encoded (posterior mean) and decoded by
    the VAE itself. Returns ``W`` as one ``[r, g, b]`` row per latent channel, and ``b``: the layout of
    ComfyUI's ``latent_rgb_factors`` and ``latent_rgb_factors_bias``.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 3, 3, generator=g) * 2 - 1
    pixels = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    z = encode(vae, pixels, sample=False).float()
    rgb = F.adaptive_avg_pool2d(decode(vae, z) * 2 - 1, z.shape[-2:]).float()
    lat = z.movedim(1, -1).reshape(-1, z.shape[1]).cpu()
    target = rgb.movedim(1, -1).reshape(-1, 3).cpu()
    design = torch.cat([lat, torch.ones(len(lat), 1)], dim=1)
    solution = torch.linalg.lstsq(design.double(), target.double()).solution.float()
    return solution[:-1].tolist(), solution[-1].tolist()
