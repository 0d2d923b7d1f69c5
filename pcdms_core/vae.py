"""The SD 2.1-base VAE as the official pipelines use it: encode with a posterior *sample* drawn from the
run's generator, scale by ``scaling_factor`` (0.18215), decode, then clamp to [0, 1].

The stages talk to a VAE through ``LatentCodec``, so any implementation with the same encoder output
(mean and log-variance) can serve: diffusers' ``AutoencoderKL`` here, ComfyUI's VAE in the nodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from . import _compat
from .errors import CheckpointError
from .memory import reuse_freed_memory
from .precision import model_device_dtype
from .sampling import randn
from .weights import WeightFile, folder_weight_file, open_weights, read_json, strict_load


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
    with reuse_freed_memory(torch.device(codec.device).type == "cpu"):
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
    with reuse_freed_memory(torch.device(codec.device).type == "cpu"):
        image = codec.decode(latents.to(device=codec.device, dtype=codec.dtype) / codec.scaling_factor)
    return (image.float() / 2 + 0.5).clamp(0, 1)


# --- loading -------------------------------------------------------------------------------------------------------

# stabilityai/stable-diffusion-2-1-base, vae/config.json
SD21_BASE_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)
_LDM_MARKERS = ("encoder.down.0.", "first_stage_model.encoder.", "vae.encoder.down.0.")


def _vae_files(path: Path) -> tuple[Path, Optional[Path]]:
    if path.is_dir():
        weights = folder_weight_file(path, ("diffusion_pytorch_model", "model"))
        if weights is None and (path / "vae").is_dir():
            return _vae_files(path / "vae")
        if weights is None:
            raise CheckpointError(f"{path} has no diffusion_pytorch_model.safetensors (a diffusers VAE folder)")
        cfg = path / "config.json"
        return weights, cfg if cfg.exists() else None
    for cand in (path.with_suffix(".json"), path.with_name(path.stem + ".config.json")):
        if cand.exists():
            return path, cand
    return path, None


def load_vae(path, *, config: Optional[dict] = None, dtype: Optional[torch.dtype] = torch.float32, device=None):
    """Load an ``AutoencoderKL`` from a diffusers folder or one file (diffusers keys, or the original
    LDM / ComfyUI layout, also inside a whole SD checkpoint). The config defaults to SD 2.1-base's VAE; a
    config passed in, a ``<name>.json`` beside the file or the file's ``pcdms.config`` metadata overrides it."""
    weight_path, config_path = _vae_files(Path(path))
    weights = open_weights(weight_path)
    cfg = dict(SD21_BASE_VAE)
    if config is not None:
        cfg.update(config)
    elif config_path is not None:
        cfg.update(read_json(config_path))
    elif "pcdms.config" in weights.metadata:  # our own files carry their config
        cfg.update(json.loads(weights.metadata["pcdms.config"]))
    keys = list(weights)
    ldm = any(k.startswith(_LDM_MARKERS) for k in keys)
    if not ldm and "encoder.conv_in.weight" not in weights:
        raise CheckpointError(
            f"{weight_path.name} is not a VAE (no encoder/decoder tensors; e.g. {', '.join(keys[:3])}). "
            "Use the SD 2.1-base VAE (diffusers folder, or a single .safetensors in models/vae)."
        )
    model = _compat.build_vae(cfg)
    if ldm:
        try:
            converted = _compat.convert_ldm_vae_state_dict(weights, model.config)
        except (KeyError, IndexError) as exc:
            raise CheckpointError(f"{weight_path.name}: cannot convert this original-format VAE ({exc})") from None
        weights = WeightFile.from_tensors(weights.path, converted, weights.metadata, weights.format)
    strict_load(
        model, weights, dtype=dtype, describe="an AutoencoderKL",
        fix="Probable fix: this is not an SD 2.1-style VAE, or it needs its config.json beside it.",
    )
    if device is not None:
        model.to(device)
    return model


def save_vae(vae, path, dtype: Optional[torch.dtype] = None) -> Path:
    """Save a diffusers ``AutoencoderKL`` as one ``.safetensors`` with its config in the metadata."""
    from safetensors.torch import save_file

    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in vae.state_dict().items()}
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"pcdms.config": json.dumps(config)})
    return path
