"""The SD 2.1-base VAE as the official pipelines use it: encode with a posterior *sample* drawn from the
run's generator, scale by ``scaling_factor`` (0.18215), decode, then clamp to [0, 1].

The stages talk to a VAE through ``LatentCodec``, so any implementation with the same encoder output
(mean and log-variance) can serve: diffusers' ``AutoencoderKL`` here, ComfyUI's VAE in the nodes.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..devices import model_device_dtype
from ..seeding import randn


class LatentCodec:
    """What the stages need from a VAE. ``DiffusersCodec`` wraps diffusers' ``AutoencoderKL``; other VAE
    implementations (ComfyUI's, in the nodes) provide the same four members and pass themselves in.

    * ``scaling_factor``: latents are scaled by it after encoding (0.18215 for SD 2.1);
    * ``downscale``: pixels per latent cell;
    * ``moments(pixels)``: the encoder's raw output (mean and log-variance stacked on dim 1) for [-1, 1] pixels
      on ``device`` / ``dtype``;
    * ``decode(z)``: unscaled latents to pixels in [-1, 1].
    """

    scaling_factor: float = 0.18215
    downscale: int = 8
    device: torch.device
    dtype: torch.dtype

    def moments(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class DiffusersCodec(LatentCodec):
    def __init__(self, vae):
        self.vae = vae
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.device, self.dtype = model_device_dtype(vae)

    def moments(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        h = vae.encoder(pixels)
        return vae.quant_conv(h) if vae.quant_conv is not None else h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


def as_codec(vae) -> LatentCodec:
    """A ``LatentCodec`` is used as it is (duck-typed); anything else is taken for a diffusers AutoencoderKL."""
    return vae if callable(getattr(vae, "moments", None)) else DiffusersCodec(vae)


def downscale_factor(vae) -> int:
    return as_codec(vae).downscale


def posterior(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the diagonal Gaussian posterior, as diffusers computes them: the
    log-variance is clamped to [-30, 20] and std = exp(logvar / 2)."""
    mean, logvar = torch.chunk(moments, 2, dim=1)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    return mean, torch.exp(0.5 * logvar)


@torch.no_grad()
def encode(vae, pixels: torch.Tensor, generator: Optional[torch.Generator] = None, *, sample: bool = True) -> torch.Tensor:
    """``[B, 3, H, W]`` in [-1, 1] to scaled latents.

    With ``sample=True`` (the official behaviour) the posterior noise is one ``randn`` of the latents' shape
    from ``generator``, drawn in fp32 on the generator's device; ``sample=False`` takes the posterior mean.
    """
    return sample_posterior(vae, *encode_posterior(vae, pixels), generator, sample=sample)


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's mean and standard deviation (unscaled) for ``[B, 3, H, W]`` in [-1, 1]: ``encode``
    without its random draw, so that it can be kept and sampled again (``sample_posterior``)."""
    codec = as_codec(vae)
    return posterior(codec.moments(pixels.to(device=codec.device, dtype=codec.dtype)))


def sample_posterior(vae, mean: torch.Tensor, std: torch.Tensor, generator: Optional[torch.Generator] = None,
                     *, sample: bool = True) -> torch.Tensor:
    """Scaled latents from a posterior of ``encode_posterior``, drawn as ``encode`` draws them."""
    codec = as_codec(vae)
    z = mean
    if sample:
        z = z + std * randn(z.shape, generator, codec.device, z.dtype)
    return z * codec.scaling_factor


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents to images ``[B, 3, H, W]`` in [0, 1] (float32, not yet rounded to 8 bits)."""
    codec = as_codec(vae)
    image = codec.decode(latents.to(device=codec.device, dtype=codec.dtype) / codec.scaling_factor)
    return (image.float() / 2 + 0.5).clamp(0, 1)
