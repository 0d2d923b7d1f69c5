"""PCDMs checkpoints: tell what a file is, load it strictly, convert it, describe it.

Files (docs/faithfulness.md, Checkpoints): the official DeepSpeed ``.pt`` files keep the model under ``"module"``; our ``.safetensors``
hold the same tensor names plus metadata. The tensor names are

* stage 1, prior: no prefix (``prd_embedding``, ``pose_encoder.*``, ``transformer_blocks.*`` ...);
* stage 2, paper: ``unet.`` (with ``class_embedding``), ``pose_proj.``, ``image_proj_model_p.``;
* stage 2 without the prior (``PCDMs_ckpt.pt``): ``unet.`` (no class embedding), ``pose_proj.``, ``image_proj_model.``;
* stage 3, refining: ``unet.`` (8 input channels), ``image_proj_model_p.``.

The stage and variant are read from these names and the tensor shapes, never from the file name.

Configs: the defaults are the official topology (SD 2.1-base UNet; the 20-block, 2048-wide prior). A config
overrides them, taken from (first found): the ``config`` argument (a dict or a JSON path), the metadata of
our safetensors, a JSON beside the file (``<name>.json``, ``<name>.config.json``, then ``config.json``).
A config may be diffusers-style (flat, as ``save_config`` writes it) or nested (``{"unet": {...}}`` /
``{"prior": {...}}``). The UNet's input channels and class embedding are always read from the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .. import diffusers_glue as glue
from .encoders import sniff_encoder_kind
from ..errors import CheckpointError
from ..networks.inpaint import PROJECTOR_NAME, InpaintModel
from ..networks.layers import ImageProjector, PoseEncoder, pose_encoder_config_from_shapes, projector_config_from_shapes
from ..networks.prior import PriorConfig, PriorTransformer
from ..networks.refine import RefineModel
from .structure import (
    built,
    check_parts,
    check_prior_config,
    check_unet_config,
    check_unet_inputs,
    read_sizes,
    shape_of,
)
from .weights import WeightFile, empty_weights, open_weights, read_json, strict_load

# The SD 2.1-base UNet (stabilityai/stable-diffusion-2-1-base, unet/config.json), which stages 2 and 3 fine-tune.
SD21_BASE_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    only_cross_attention=False,
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=[5, 10, 20, 20],
    dual_cross_attention=False,
    use_linear_projection=True,
    class_embed_type=None,
    num_class_embeds=None,
    upcast_attention=False,
    resnet_time_scale_shift="default",
)

STAGE_TITLES = {
    "prior": "stage-1 prior",
    "paper": "stage-2 inpainting (paper variant: takes the prior's embedding)",
    "noprior": "stage-2 inpainting without the prior (the released PCDMs_ckpt.pt)",
    "refine": "stage-3 refining",
}
STAGE_OF_VARIANT = {"prior": "prior", "paper": "inpaint", "noprior": "inpaint", "refine": "refine"}
META_STAGE, META_VARIANT, META_CONFIG = "pcdms.stage", "pcdms.variant", "pcdms.config"
DEEPSPEED_FILE = "mp_rank_00_model_states.pt"

PCDMsModel = Union[PriorTransformer, InpaintModel, RefineModel]


@dataclass
class CheckpointInfo:
    path: Path
    stage: str  # "prior" | "inpaint" | "refine"
    variant: str  # "prior" | "paper" | "noprior" | "refine"
    config: dict = field(default_factory=dict)  # {"prior": {...}} or {"unet": {...}}
    config_source: str = "official defaults"
    format: str = ""
    dtypes: str = ""
    num_parameters: int = 0

    @property
    def title(self) -> str:
        return STAGE_TITLES[self.variant]


# --- what is this file? ------------------------------------------------------------------------------------------

def _has(keys: set, *names: str) -> bool:
    return all(n in keys for n in names)


def _prefixes(keys) -> dict[str, int]:
    counts: dict[str, int] = {}
    for k in keys:
        p = k.split(".")[0]
        counts[p] = counts.get(p, 0) + 1
    return counts


def identify(weights: WeightFile) -> tuple[str, str]:
    """(stage, variant) of a PCDMs checkpoint, or a ``CheckpointError`` that says what the file is instead."""
    keys = set(weights)
    name = weights.path.name
    if _has(keys, "prd_embedding", "positional_embedding", "pose_encoder.net.0.weight", "proj_to_clip_embeddings.weight"):
        return "prior", "prior"
    if "unet.conv_in.weight" in keys:
        in_ch = shape_of(weights.shapes, "unet.conv_in.weight", 4, name, "the UNet's input channels")[1]
        has_pose = "pose_proj.conv_in.weight" in keys
        has_class = "unet.class_embedding.linear_1.weight" in keys
        proj_p = "image_proj_model_p.net.0.weight" in keys
        proj = "image_proj_model.net.0.weight" in keys
        if has_pose and proj_p and has_class:
            return "inpaint", "paper"
        if has_pose and proj and not has_class:
            return "inpaint", "noprior"
        if not has_pose and proj_p and not has_class:
            return "refine", "refine"
        parts = [f"UNet with {in_ch} input channels", "a class embedding" if has_class else "no class embedding",
                 "a pose encoder (pose_proj)" if has_pose else "no pose encoder",
                 "projector image_proj_model_p" if proj_p else ("projector image_proj_model" if proj else "no image projector")]
        resembles = "stage 2" if has_pose else "stage 3"
        raise CheckpointError(
            f"{name} resembles a PCDMs {resembles} checkpoint but its parts do not fit any released variant: "
            f"{', '.join(parts)}. Paper stage 2 has pose_proj + image_proj_model_p + a class embedding; the no-prior variant "
            "has pose_proj + image_proj_model and no class embedding; stage 3 has image_proj_model_p only. The file "
            "may be truncated or from another project."
        )
    raise CheckpointError(f"{name} is not a PCDMs checkpoint: {_what_else(weights)}")


def _what_else(weights: WeightFile) -> str:
    keys = list(weights)
    kind = sniff_encoder_kind(keys)
    if kind == "clip":
        return "it is a CLIP vision model; load it with the image-encoder loader (models/clip_vision)."
    if kind == "dinov2":
        return "it is a DINOv2 image encoder; load it with the image-encoder loader (models/clip_vision)."
    if kind == "openclip":
        return "it is an OpenCLIP model; PCDMs needs the transformers-format CLIP ViT-H/14 file."
    ks = set(keys)
    if any(k.startswith("model.diffusion_model.") for k in ks):
        return ("it is a whole Stable Diffusion checkpoint (models/checkpoints). PCDMs stages come as their own "
                "files: s1_512.pt / s2_512.pt / s3_512.pt or PCDMs_ckpt.pt (models/pcdms).")
    if any(k.startswith(("encoder.down", "decoder.up", "first_stage_model.", "encoder.conv_in")) for k in ks):
        return "it is a VAE; load it with the VAE loader (models/vae)."
    if "conv_in.weight" in ks and any(k.startswith("down_blocks.") for k in ks):
        return ("it is a bare diffusers UNet without PCDMs' prefixes (unet., pose_proj., image_proj_model*.); "
                "use the official stage file or our converted .safetensors.")
    top = sorted(_prefixes(keys).items(), key=lambda kv: -kv[1])[:4]
    return f"{len(keys)} tensors under {', '.join(f'{p}. ({n})' for p, n in top)}; expected PCDMs stage weights."


# --- configs -----------------------------------------------------------------------------------------------------

def _as_config_dict(config) -> tuple[dict, str]:
    if config is None:
        return {}, ""
    if isinstance(config, dict):
        return dict(config), "argument"
    p = Path(config)
    if p.is_dir():
        p = p / "config.json"
    return read_json(p), str(p)


def _section(cfg: dict, stage: str) -> Optional[dict]:
    """The part of ``cfg`` that configures ``stage``'s network, or None if it is about something else."""
    key = "prior" if stage == "prior" else "unet"
    if isinstance(cfg.get(key), dict):
        return cfg[key]
    cls = str(cfg.get("_class_name", ""))
    is_prior = "Prior" in cls or ("num_layers" in cfg and "attention_head_dim" in cfg and "block_out_channels" not in cfg)
    is_unet = "UNet" in cls or "block_out_channels" in cfg
    if stage == "prior" and is_prior:
        return cfg
    if stage != "prior" and is_unet and not is_prior:
        return cfg
    return None


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + ".json"), path.with_suffix(".json"),
            path.with_name(path.stem + ".config.json"), path.parent / "config.json"]


def resolve_config(weights: WeightFile, stage: str, config=None) -> tuple[dict, str]:
    """The network config for ``stage`` (see the module docstring) and where it came from."""
    section, source = None, "official defaults"
    given, given_src = _as_config_dict(config)
    if given:
        section = _section(given, stage)
        if section is None:
            network = {"prior": "the prior's transformer", "inpaint": "a stage-2 UNet", "refine": "a stage-3 UNet"}[stage]
            raise CheckpointError(
                f"{weights.path.name}: the config passed ({given_src}) does not describe {network}; pass the "
                "config of this file's network (or none for official-size files)"
            )
        source = given_src
    if section is None and META_CONFIG in weights.metadata:
        try:
            section = _section(json.loads(weights.metadata[META_CONFIG]), stage)
            source = "file metadata"
        except json.JSONDecodeError:
            section = None
    if section is None:
        for cand in _sidecars(weights.path):
            if cand.exists() and cand != weights.path:
                sec = _section(read_json(cand), stage)
                if sec is not None:
                    section, source = sec, cand.name
                    break
    if stage == "prior":
        cfg = PriorConfig.from_dict(section or {}).to_dict()
        check_prior_config(cfg, source)
        return {"prior": cfg}, source
    cfg = {**SD21_BASE_UNET, **{k: v for k, v in (section or {}).items() if not k.startswith("_")}}
    # Facts that define the variant are read from the file, whatever the config says.
    s, name = weights.shapes, weights.path.name
    cfg["in_channels"] = shape_of(s, "unet.conv_in.weight", 4, name, "the UNet's input channels")[1]
    cfg["out_channels"] = shape_of(s, "unet.conv_out.weight", 4, name, "the UNet's output channels")[0]
    if "unet.class_embedding.linear_1.weight" in weights:
        cfg["class_embed_type"] = "projection"
        cfg["projection_class_embeddings_input_dim"] = shape_of(
            s, "unet.class_embedding.linear_1.weight", 2, name, "the class embedding's width")[1]
    else:
        cfg["class_embed_type"] = None
        cfg["projection_class_embeddings_input_dim"] = None
    check_unet_config(cfg, source)
    return {"unet": cfg}, source


# --- loading -----------------------------------------------------------------------------------------------------

def resolve_path(path) -> Path:
    """A checkpoint path; a DeepSpeed output folder resolves to its ``mp_rank_00_model_states.pt``."""
    p = Path(path)
    if p.is_dir():
        inner = p / DEEPSPEED_FILE
        if inner.exists():
            return inner
        raise CheckpointError(f"{p} is a folder without {DEEPSPEED_FILE}; give the checkpoint file itself")
    return p


def inspect_checkpoint(path, config=None) -> CheckpointInfo:
    """Identify a file and resolve its config, without loading any weights."""
    weights = open_weights(resolve_path(path))
    return _info(weights, config)


def _info(weights: WeightFile, config=None) -> CheckpointInfo:
    stage, variant = identify(weights)
    if stage != "prior":
        check_unet_inputs(weights.shapes, stage, weights.path.name)
    cfg, source = resolve_config(weights, stage, config)
    return CheckpointInfo(
        path=weights.path, stage=stage, variant=variant, config=cfg, config_source=source,
        format=weights.format, dtypes=weights.dtype_summary(), num_parameters=weights.num_parameters(),
    )


def build_model(info: CheckpointInfo, weights: WeightFile) -> PCDMsModel:
    """The network for ``info`` with its parameters on the meta device (``strict_load`` fills them)."""
    name, source = weights.path.name, info.config_source
    if info.stage == "prior":
        with empty_weights():
            return built(lambda: PriorTransformer(PriorConfig.from_dict(info.config["prior"])), "prior", source)
    proj_name = PROJECTOR_NAME[info.variant if info.variant in PROJECTOR_NAME else "paper"]
    unet = built(lambda: glue.build_unet(info.config["unet"]), "UNet", source)
    projector_config = read_sizes(lambda: projector_config_from_shapes(weights.shapes, proj_name + "."), name,
                                  f"the image projector ({proj_name})")
    with empty_weights():
        projector = ImageProjector(projector_config)
        if info.stage == "refine":
            return RefineModel(unet, projector)
        pose_config = read_sizes(lambda: pose_encoder_config_from_shapes(weights.shapes, "pose_proj."), name,
                                 "the pose encoder (pose_proj)")
        pose = PoseEncoder(pose_config)
    return InpaintModel(unet, pose, projector, info.variant)


def _fix_hint(info: CheckpointInfo) -> str:
    if info.config_source == "official defaults":
        return ("Probable fix: this checkpoint is not the official size; put its config.json (diffusers "
                "save_config of its network) beside it, or pass config=.")
    return f"Probable fix: the config from {info.config_source} does not describe this checkpoint; correct or remove it."


def load_checkpoint(
    path,
    *,
    config=None,
    dtype: Optional[torch.dtype] = torch.float32,
    device=None,
    expect: Optional[str] = None,
) -> PCDMsModel:
    """Load a PCDMs stage checkpoint (official ``.pt`` or our ``.safetensors``) strictly.

    ``expect`` ("prior", "inpaint" or "refine") turns a file of another stage into a clear error.
    ``dtype=None`` keeps the stored dtype (the official files are fp16).
    """
    weights = open_weights(resolve_path(path))
    info = _info(weights, config)
    if expect is not None and info.stage != expect:
        wanted = {"prior": "a stage-1 prior", "inpaint": "a stage-2 inpainting", "refine": "a stage-3 refining"}[expect]
        raise CheckpointError(
            f"{weights.path.name} is a {info.title} checkpoint, but {wanted} checkpoint is needed here: pick the "
            "other file (the file name does not matter; its contents decide)"
        )
    model = build_model(info, weights)
    strict_load(model, weights, dtype=dtype, describe=f"it looks like {info.title}", fix=_fix_hint(info))
    if info.stage != "prior":
        check_parts(weights.shapes, info.config["unet"], PROJECTOR_NAME.get(info.variant, "image_proj_model_p") + ".",
                    weights.path.name, "pose_proj." if info.stage == "inpaint" else None)
    model.checkpoint_info = info
    if device is not None:
        model.to(device)
    return model


# --- conversion and description --------------------------------------------------------------------------------

def convert_checkpoint(src, dst=None, *, config=None, dtype: Optional[torch.dtype] = None) -> Path:
    """Write a PCDMs stage file as ``.safetensors`` with its stage, variant and config in the metadata.

    The tensors keep their names and (unless ``dtype`` is given) their dtype, so the official fp16 files stay
    fp16. ``dst`` defaults to the source path with a ``.safetensors`` suffix.
    """
    src_path = resolve_path(src)
    weights = open_weights(src_path)
    info = _info(weights, config)
    dst_path = Path(dst) if dst is not None else src_path.with_suffix(".safetensors")
    if dst_path.resolve() == src_path.resolve():
        raise CheckpointError(f"refusing to overwrite the source {src_path}; give another output path")
    _write(weights, dst_path, info.stage, info.variant, info.config, dtype, {"pcdms.source": src_path.name})
    return dst_path


def _write(tensors, path: Path, stage: str, variant: str, config: dict, dtype, extra: Optional[dict] = None) -> None:
    from safetensors.torch import save_file

    out = {}
    for k in tensors:
        t = tensors[k]
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[k] = t.detach().cpu().contiguous()
    metadata = {META_STAGE: stage, META_VARIANT: variant, META_CONFIG: json.dumps(config), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=metadata)


def save_checkpoint(model: PCDMsModel, path, *, dtype: Optional[torch.dtype] = None, extra: Optional[dict] = None) -> Path:
    """Save one of our stage models in the checkpoint layout (official tensor names) as ``.safetensors``,
    with its stage, variant and config in the metadata, so it loads with no config file."""
    if isinstance(model, PriorTransformer):
        stage, variant, config = "prior", "prior", {"prior": model.config.to_dict()}
    else:
        stage = model.stage
        variant = model.variant
        config = {"unet": {k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")}}
    path = Path(path)
    _write(model.state_dict(), path, stage, variant, config, dtype, extra)
    return path


def describe(info: CheckpointInfo) -> str:
    """A few lines a person can read: what the file is, its config, dtype and size."""
    lines = [
        f"file:       {info.path}",
        f"format:     {info.format}",
        f"model:      {info.title}",
        f"parameters: {info.num_parameters:,}",
        f"dtypes:     {info.dtypes}",
        f"config:     {info.config_source}",
    ]
    if info.stage == "prior":
        c = info.config["prior"]
        lines.append(
            f"  {c['num_layers']} blocks, width {c['num_attention_heads'] * c['attention_head_dim']} "
            f"({c['num_attention_heads']} heads x {c['attention_head_dim']}), embedding {c['embedding_dim']}"
        )
    else:
        c = info.config["unet"]
        lines.append(
            f"  UNet in_channels {c['in_channels']}, blocks {list(c['block_out_channels'])}, "
            f"class embedding {c['class_embed_type'] or 'none'}, cross-attention {c['cross_attention_dim']}"
        )
    return "\n".join(lines)
