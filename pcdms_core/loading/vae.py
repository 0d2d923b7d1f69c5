"""Loading VAEs: a diffusers folder or one file (diffusers keys, or the original LDM / ComfyUI layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .. import diffusers_glue as glue
from ..errors import CheckpointError
from .structure import built
from .weights import WeightFile, empty_weights, folder_weight_file, open_weights, read_json, strict_load

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


def looks_like_vae(keys) -> bool:
    """Whether tensor names are a VAE's: diffusers' AutoencoderKL, or the original LDM / ComfyUI layout."""
    keys = list(keys)
    return "encoder.conv_in.weight" in keys or any(k.startswith(_LDM_MARKERS) for k in keys)


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


def _config_source(config, config_path: Optional[Path], weights: WeightFile) -> str:
    if config is not None:
        return "the config passed"
    if config_path is not None:
        return config_path.name
    return "the file's metadata" if "pcdms.config" in weights.metadata else "the SD 2.1-base defaults"


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
    if not looks_like_vae(keys):
        raise CheckpointError(
            f"{weight_path.name} is not a VAE (no encoder/decoder tensors; e.g. {', '.join(keys[:3])}). "
            "Use the SD 2.1-base VAE (diffusers folder, or a single .safetensors in models/vae)."
        )
    with empty_weights():
        model = built(lambda: glue.build_vae(cfg), "VAE", _config_source(config, config_path, weights))
    if ldm:
        try:
            converted = glue.convert_ldm_vae_state_dict(weights, model.config)
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
