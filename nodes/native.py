"""The native path: PCDMs stages 2 and 3 as ComfyUI ``MODEL``s, for KSampler and every core sampler, scheduler and
model patch, under ComfyUI's own model management (partial loading, offloading, casting).

The stage file's UNet is rebuilt as ComfyUI's own ``UNetModel`` from ``comfy.ops`` layers, with the official
(diffusers) tensor names mapped to ComfyUI's; the parts ComfyUI lacks are carried the ComfyUI way:

* the mask and masked-source latents (stage 2) or the coarse latents (stage 3) are concat conditioning
  (``c_concat``), given by the PCDMs Conditioning nodes;
* the prior's embedding (paper stage 2) is the ``adm`` class input (``y``), as the official class embedding;
* the pose image goes through the checkpoint's pose encoder inside the diffusion model, and its features are added
  after the first input block through ComfyUI's ``input_block_patch`` hook;
* the image projector stays with the model (its memory counted), and the Conditioning nodes apply it.

The conditioning tensors themselves come from ``pcdms_core.stages.conditions``; this module only adapts them.
"""

from __future__ import annotations

import json
import types
from dataclasses import asdict
from typing import Any, Optional

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..pcdms_core import InputError
from ..pcdms_core.bundled import demo_file, is_demo_file
from ..pcdms_core.errors import CheckpointError
from ..pcdms_core.loading.checkpoints import load_checkpoint
from ..pcdms_core.loading.weights import open_weights
from ..pcdms_core.networks import vae as vae_ops
from ..pcdms_core.networks.inpaint import PROJECTOR_NAME
from ..pcdms_core.networks.layers import ImageProjector, PoseEncoder, PoseEncoderConfig
from ..pcdms_core.stages.conditions import StageConditions, inpaint_conditions, refine_conditions
from ..pcdms_core.stages.loop import check_finite, check_finite_input, common_batch
from .bridge import (
    PCDMS_FOLDER, full_path, images_in, images_out, missing_model, model_files, output, reported, source_tokens,
    vae_for_stage,
)
from .types import PcdmsEmbedding, PcdmsSource, PcdmsVae, PoseKeypoint

CATEGORY = "PCDMs/native"
SD_LATENT_SCALE = 0.18215
WEIGHT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# --- the UNet in ComfyUI's terms -------------------------------------------------------------------------------------

# diffusers UNet settings that ComfyUI's UNetModel builds only with these values
_FIXED = {
    "act_fn": "silu", "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "time_embedding_type": "positional", "resnet_time_scale_shift": "default", "only_cross_attention": False,
    "dual_cross_attention": False, "upcast_attention": False, "addition_embed_type": None, "encoder_hid_dim": None,
    "time_cond_proj_dim": None, "timestep_post_act": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "class_embeddings_concat": False, "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
    "num_class_embeds": None, "attention_type": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "cross_attention_norm": None, "mid_block_only_cross_attention": None,
}
_DOWN = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}


def _per_level(value, levels: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise InputError(f"the UNet config's {what} has {len(value)} entries for {levels} levels")
        return list(value)
    return [value] * levels


def comfy_unet_config(cfg: dict) -> tuple[dict, int]:
    """ComfyUI's ``UNetModel`` arguments for a diffusers UNet config, and its group-norm group count. Raises
    ``InputError`` naming the setting for a UNet ComfyUI's model cannot reproduce."""

    def unsupported(what: str) -> InputError:
        return InputError(
            f"this checkpoint's UNet has {what}, which ComfyUI's UNet cannot reproduce: run it with the PCDMs "
            "stage nodes (PCDMs Inpaint / PCDMs Refine) instead of the native path"
        )

    for key, want in _FIXED.items():
        if key in cfg and cfg[key] != want and not (key == "norm_eps" and abs(float(cfg[key]) - want) < 1e-12):
            raise unsupported(f"{key}={cfg[key]!r} (the native path needs {want!r})")
    if cfg.get("class_embed_type") not in (None, "projection"):
        raise unsupported(f"class_embed_type={cfg['class_embed_type']!r}")
    widths = [int(w) for w in cfg["block_out_channels"]]
    levels = len(widths)
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if len(down) != levels or len(up) != levels:
        raise InputError("the UNet config's block lists do not match block_out_channels: the config is damaged")
    for block in down + up:
        if block not in _DOWN and block not in _UP:
            raise unsupported(f"a {block}")
    if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise unsupported(f"mid_block_type={cfg.get('mid_block_type')!r}")
    base = widths[0]
    if any(w % base for w in widths):
        raise unsupported(f"block widths {widths} that are not multiples of the first")
    layers = [int(n) for n in _per_level(cfg.get("layers_per_block", 2), levels, "layers_per_block")]
    depth = [int(n) for n in _per_level(cfg.get("transformer_layers_per_block", 1) or 1, levels,
                                        "transformer_layers_per_block")]
    if cfg.get("reverse_transformer_layers_per_block") is not None:
        raise unsupported("reverse_transformer_layers_per_block")
    heads = _per_level(cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8), levels, "attention heads")
    cross_down = [_DOWN[b] for b in down]
    cross_up = [_UP[b] for b in reversed(up)]  # indexed by level, as the down blocks
    attn_levels = sorted({i for i in range(levels) if cross_down[i] or cross_up[i]} | {levels - 1})
    head_dims = {widths[i] // int(heads[i]) for i in attn_levels}
    head_counts = {int(heads[i]) for i in attn_levels}
    if any(widths[i] % int(heads[i]) for i in attn_levels):
        raise InputError(f"the UNet config's attention heads {heads} do not divide the block widths {widths}")
    if len(head_dims) == 1:
        num_heads, head_channels = -1, head_dims.pop()
    elif len(head_counts) == 1:
        num_heads, head_channels = head_counts.pop(), -1
    else:
        raise unsupported(f"attention heads {heads} that neither share a head width nor a count")
    groups = int(cfg.get("norm_num_groups", 32))
    if any(w % groups for w in widths):
        raise InputError(f"the UNet config's norm_num_groups={groups} does not divide the block widths {widths}")
    out = dict(
        image_size=32, in_channels=int(cfg["in_channels"]), out_channels=int(cfg.get("out_channels", 4)),
        model_channels=base, num_res_blocks=layers, channel_mult=[w // base for w in widths],
        transformer_depth=[depth[i] if cross_down[i] else 0 for i in range(levels) for _ in range(layers[i])],
        transformer_depth_output=[depth[i] if cross_up[i] else 0 for i in range(levels) for _ in range(layers[i] + 1)],
        transformer_depth_middle=depth[-1], context_dim=int(cfg["cross_attention_dim"]),
        use_linear_in_transformer=bool(cfg.get("use_linear_projection", False)), use_spatial_transformer=True,
        legacy=False, num_heads=num_heads, num_head_channels=head_channels, conv_resample=True, dims=2,
        use_checkpoint=False, use_temporal_resblock=False, use_temporal_attention=False,
    )
    if cfg.get("class_embed_type") == "projection":
        out.update(num_classes="sequential", adm_in_channels=int(cfg["projection_class_embeddings_input_dim"]))
    return out, groups


def _with_norm_groups(operations, groups: int):
    """``operations`` whose GroupNorm uses ``groups`` groups (ComfyUI's UNet asks for 32 everywhere)."""
    if groups == 32:
        return operations

    class GroupNorm(operations.GroupNorm):
        def __init__(self, num_groups=None, num_channels=None, *args, **kwargs):
            super().__init__(groups, num_channels, *args, **kwargs)

    return type(f"{operations.__name__}Groups{groups}", (operations,), {"GroupNorm": GroupNorm})


def _build_classes() -> types.SimpleNamespace:
    """The classes that derive from ComfyUI's model classes, made on first use (so that the node schemas load
    wherever ``comfy_api`` does)."""
    import comfy.conds
    import comfy.latent_formats
    import comfy.model_base
    import comfy.ops
    import comfy.supported_models_base
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    class _AddPose:
        """ComfyUI ``input_block_patch``: adds the pose features to the output of the first input block (conv_in)."""

        def __init__(self, features: torch.Tensor):
            self.features = features

        def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
            if transformer_options.get("block") == ("input", 0):
                return h + self.features.to(h.dtype)
            return h

    class PCDMsUNet(UNetModel):
        """ComfyUI's UNet, with the stage-2 pose encoder (``pose_proj``) when the checkpoint has one."""

        def __init__(self, *args, pcdms_pose: Optional[dict] = None, pcdms_norm_groups: int = 32, operations=None,
                     device=None, **kwargs):
            operations = _with_norm_groups(operations or comfy.ops.disable_weight_init, pcdms_norm_groups)
            super().__init__(*args, operations=operations, device=device, **kwargs)
            self.pose_proj = None
            if pcdms_pose is not None:
                self.pose_proj = PoseEncoder(PoseEncoderConfig(**pcdms_pose), operations=operations, dtype=self.dtype,
                                             device=device)

        def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, pcdms_pose=None,
                    **kwargs):
            if self.pose_proj is not None:
                if pcdms_pose is None:
                    raise InputError("this PCDMs stage-2 MODEL needs the pose from PCDMs Inpaint Conditioning")
                features = self.pose_proj(pcdms_pose.to(x.dtype))
                if tuple(features.shape[-2:]) != tuple(x.shape[-2:]):
                    raise InputError(
                        f"the pose gives a {tuple(features.shape[-2:])} grid but the latents are {tuple(x.shape[-2:])}: "
                        "connect the latent of PCDMs Inpaint Conditioning (and the VAE the checkpoint was trained with)"
                    )
                patches = dict(transformer_options.get("patches", {}))
                patches["input_block_patch"] = [_AddPose(features)] + list(patches.get("input_block_patch", []))
                transformer_options = {**transformer_options, "patches": patches}
            return super().forward(x, timesteps, context, y, control, transformer_options, **kwargs)


    class PCDMsStageConfig(comfy.supported_models_base.BASE):
        """The model config ComfyUI keeps for a PCDMs UNet: SD 2.1-base noise schedule (epsilon), our latent scale."""

        unet_config: dict = {}
        unet_extra_config: dict = {}
        latent_format = comfy.latent_formats.SD15
        memory_usage_factor = 1.0
        supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]


    def _latent_format(scale: float, rgb=None):
        """ComfyUI's SD latent format (previews included) for the SD 2.1 VAE's scale, else one with ``scale`` and
        the preview colours ``rgb`` (factors, bias) fitted to its VAE, when known."""
        if abs(scale - SD_LATENT_SCALE) < 1e-6:
            return comfy.latent_formats.SD15
        factors, bias = rgb if rgb is not None else (None, None)
        return type("PCDMsLatent", (comfy.latent_formats.LatentFormat,),
                    {"scale_factor": scale, "latent_rgb_factors": factors, "latent_rgb_factors_bias": bias,
                     "taesd_decoder_name": None})


    class PCDMsNativeModel(comfy.model_base.BaseModel):
        """A PCDMs stage-2 or stage-3 UNet as a ComfyUI model (epsilon prediction on the SD 2.1-base schedule)."""

        def __init__(self, model_config, *, stage: str, variant: str, projector_config, device=None):
            super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device, unet_model=PCDMsUNet)
            self.pcdms_stage = stage
            self.pcdms_variant = variant
            self.pcdms_projector = ImageProjector(projector_config, operations=comfy.ops.disable_weight_init,
                                                  dtype=model_config.unet_config.get("dtype"), device=device)

        @property
        def pose_downscale(self) -> int:
            pose = self.diffusion_model.pose_proj
            return pose.downscale if pose is not None else 1

        def encode_adm(self, **kwargs):
            if not self.adm_channels:
                return None
            label = kwargs.get("pcdms_class")
            if label is None:
                raise InputError("the paper stage-2 MODEL needs the prior's embedding: use PCDMs Inpaint Conditioning with "
                                 "the embedding from PCDMs Prior connected")
            return label

        def extra_conds(self, **kwargs):
            out = super().extra_conds(**kwargs)
            concat = kwargs.get("pcdms_concat")
            if concat is None:
                node = "PCDMs Inpaint Conditioning" if self.pcdms_stage == "inpaint" else "PCDMs Refine Conditioning"
                raise InputError(f"a PCDMs MODEL samples only with the positive and negative of {node}")
            noise = kwargs.get("noise")
            if noise is not None and tuple(noise.shape[-2:]) != tuple(concat.shape[-2:]):
                raise InputError(
                    f"the latent is {tuple(noise.shape[-2:])} but the PCDMs conditioning was made for "
                    f"{tuple(concat.shape[-2:])}: connect the latent output of the PCDMs Conditioning node to the sampler"
                )
            made_for = kwargs.get("pcdms_for")
            if made_for is not None and made_for != (self.pcdms_stage, self.pcdms_variant):
                raise InputError(
                    f"this conditioning was made for a {made_for[1]} PCDMs model but the sampler's MODEL is a "
                    f"{self.pcdms_variant} one: give the Conditioning node and the sampler the same MODEL"
                )
            out["c_concat"] = comfy.conds.CONDNoiseShape(concat)
            pose = kwargs.get("pcdms_pose")
            if self.pcdms_stage == "inpaint":
                if pose is None:
                    raise InputError("the stage-2 MODEL needs the pose of PCDMs Inpaint Conditioning")
                out["pcdms_pose"] = comfy.conds.CONDRegular(pose)
            return out

    return types.SimpleNamespace(AddPose=_AddPose, UNet=PCDMsUNet, Config=PCDMsStageConfig, Model=PCDMsNativeModel,
                                 latent_format=_latent_format)


_CLASSES: Optional[types.SimpleNamespace] = None


def comfy_classes() -> types.SimpleNamespace:
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _build_classes()
    return _CLASSES


# --- loading ---------------------------------------------------------------------------------------------------------

_DEMO_PREVIEW: list = []


def _latent_space(path: str, metadata: dict) -> tuple[float, Optional[tuple]]:
    """The latent scale the stage file was trained with, and preview colours for it when they differ from SD's:
    a file's own ``pcdms.latent_scale`` metadata, the demo VAE's for the bundled demo models (previews fitted to
    it once), else the SD 2.1 VAE's."""
    if "pcdms.latent_scale" in metadata:
        return float(metadata["pcdms.latent_scale"]), None
    if is_demo_file(path):
        vae_meta = open_weights(demo_file("vae")).metadata
        if not _DEMO_PREVIEW:
            from ..pcdms_core.loading.vae import load_vae
            from ..pcdms_core.networks.preview import latent_rgb_factors

            _DEMO_PREVIEW.append(latent_rgb_factors(load_vae(demo_file("vae"))))
        return float(json.loads(vae_meta["pcdms.config"])["scaling_factor"]), _DEMO_PREVIEW[0]
    return SD_LATENT_SCALE, None


def _map_unet(sd: dict, unet_config: dict) -> dict:
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(unet_config)
    out, used = {}, set()
    for diffusers_key, comfy_key in mapping.items():
        key = "unet." + diffusers_key
        if key in sd:
            out[comfy_key] = sd[key]
            used.add(key)
    left = [k for k in sd if k.startswith("unet.") and k not in used]
    if left:
        raise CheckpointError(f"{len(left)} UNet tensors have no place in ComfyUI's UNet, e.g. {', '.join(left[:3])}: "
                              "run this checkpoint with the PCDMs stage nodes")
    return out


def _strict(module: torch.nn.Module, sd: dict, what: str) -> None:
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{what} does not fit ComfyUI's model: missing {missing[:3]} ({len(missing)}), "
                              f"unexpected {unexpected[:3]} ({len(unexpected)})")


def load_native(path: str, weight_dtype: str = "default"):
    """A stage-2 or stage-3 file as a ComfyUI ``ModelPatcher`` around a ``PCDMsNativeModel``: ComfyUI decides the
    UNet's dtype for the device (``--fp16-unet``, ``--bf16-unet`` ...) unless ``weight_dtype`` names one."""
    core = load_checkpoint(path, dtype=None)  # every check of the core loader, keeping the stored dtype
    info = core.checkpoint_info
    if info.stage == "prior":
        raise InputError(f"{info.path.name} is the stage-1 prior, which has no ComfyUI equivalent: load it with PCDMs "
                         "Checkpoint Loader for PCDMs Prior; this loader takes stage-2 and stage-3 files")
    metadata = open_weights(info.path).metadata if info.path.suffix == ".safetensors" else {}
    scale, preview = _latent_space(str(info.path), metadata)
    return native_from_core(core, weight_dtype, latent_scale=scale, preview=preview)


def native_from_core(core, weight_dtype: str = "default", *, latent_scale: float = SD_LATENT_SCALE,
                     preview: Optional[tuple] = None):
    """Our stage-2 or stage-3 network (``InpaintModel`` / ``RefineModel``) as a ComfyUI ``ModelPatcher`` (its
    weights are moved into ComfyUI's UNet; ``core`` is not used afterwards). ``latent_scale`` and ``preview``:
    the latent space of the VAE it was trained with (see ``_latent_space``)."""
    import comfy.model_patcher

    unet_config, groups = comfy_unet_config(dict(core.unet.config))
    unet_config["pcdms_norm_groups"] = groups
    projector_name = PROJECTOR_NAME[core.variant if core.variant in PROJECTOR_NAME else "paper"]
    projector_config = core.image_proj.config
    if core.stage == "inpaint":
        unet_config["pcdms_pose"] = asdict(core.pose_proj.config)
    info = getattr(core, "checkpoint_info", None)
    stage, variant = core.stage, core.variant
    sd = core.state_dict()
    params = sum(t.numel() for t in sd.values())
    stored = next(t.dtype for k, t in sd.items() if k.startswith("unet.") and t.is_floating_point())
    c = comfy_classes()
    config_cls = type("PCDMsStage", (c.Config,), {"latent_format": c.latent_format(latent_scale, preview)})
    supported = c.Config.supported_inference_dtypes
    load_device = mm.get_torch_device()
    dtype = WEIGHT_DTYPES[weight_dtype] or mm.unet_dtype(model_params=params, supported_dtypes=supported,
                                                        weight_dtype=stored)
    model_config = config_cls(unet_config)
    model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, load_device, supported))
    model = c.Model(model_config, stage=stage, variant=variant, projector_config=projector_config)
    name = info.path.name if info is not None else f"this {stage} model"
    unet_sd = _map_unet(sd, unet_config)
    unet_sd.update({k: v for k, v in sd.items() if k.startswith("pose_proj.")})
    _strict(model.diffusion_model, unet_sd, f"{name}'s UNet")
    prefix = projector_name + "."
    _strict(model.pcdms_projector, {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)},
            f"{name}'s image projector")
    model.pcdms_info = info
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


# --- nodes -----------------------------------------------------------------------------------------------------------

def native_model(model, stage: str):
    """The PCDMs model inside a MODEL, or an error saying which loader gives one for ``stage``."""
    inner = getattr(model, "model", None)
    if inner is None or not isinstance(inner, comfy_classes().Model):
        raise InputError("connect a MODEL from PCDMs Load Stage as MODEL (a stage-2 or stage-3 PCDMs file) here")
    if inner.pcdms_stage != stage:
        want = {"inpaint": "a stage-2 (inpainting)", "refine": "a stage-3 (refining)"}[stage]
        held = inner.pcdms_info.title if inner.pcdms_info is not None else f"a {inner.pcdms_stage} model"
        raise InputError(f"this MODEL holds {held}; this node needs {want} PCDMs model")
    return inner


def _projector(model) -> ImageProjector:
    """A float32 copy of the model's image projector on the CPU: the conditioning is made before sampling, whatever
    ComfyUI has loaded where (a few million weights)."""
    copy_ = ImageProjector(model.pcdms_projector.config)
    copy_.load_state_dict({k: v.detach().float().cpu() for k, v in model.pcdms_projector.state_dict().items()})
    return copy_.eval()


def _check_vae_scale(model, vae) -> None:
    ours = float(model.latent_format.scale_factor)
    theirs = float(vae_ops.as_codec(vae).scaling_factor)
    if abs(ours - theirs) > 1e-6 * max(1.0, ours):
        raise InputError(
            f"this VAE scales its latents by {theirs:g} but the model was trained on latents scaled by {ours:g}: "
            "connect the VAE the checkpoint belongs to (the SD 2.1 VAE for the official files, pcdms_demo_vae for the "
            "demo models)"
        )


def _conditioning(conds: StageConditions, stage: str, variant: str) -> tuple[list, list]:
    def entry(context, concat, label):
        extra = {"pcdms_concat": concat, "pcdms_for": (stage, variant)}
        if conds.pose is not None:
            extra["pcdms_pose"] = conds.pose
        if label is not None:
            extra["pcdms_class"] = label
        return [[context, extra]]

    return (entry(conds.context, conds.concat, conds.class_label),
            entry(conds.uncond_context, conds.uncond_concat, conds.uncond_class_label))


def _latent(shape, scale: float, start: Optional[torch.Tensor] = None) -> dict:
    samples = torch.zeros(shape) if start is None else start / scale
    return {"samples": samples.to(mm.intermediate_device())}


def _load_vae(vae, pixel_shape) -> Any:
    vae_model, vae_patcher, memory = vae_for_stage(vae, pixel_shape)
    mm.load_models_gpu([vae_patcher], memory_required=memory, force_full_load=True)
    return vae_model


class PCDMsNativeLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsNativeLoader",
            display_name="PCDMs Load Stage as MODEL",
            category=CATEGORY,
            description=(
                "Loads a stage-2 (inpainting, paper or no-prior) or stage-3 (refining) PCDMs file as a ComfyUI MODEL, "
                "built from ComfyUI's own UNet: sample it with KSampler or any core sampler, scheduler and model patch, "
                "with the positive, negative and latent of the matching PCDMs Conditioning node. ComfyUI loads, casts "
                "and offloads it like any SD 2.x model (low-VRAM partial loading included)."
            ),
            inputs=[
                io.Combo.Input("ckpt_name", options=model_files(PCDMS_FOLDER),
                               tooltip="A stage-2 or stage-3 file in models/pcdms (official .pt or converted .safetensors)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="default: ComfyUI's choice for this device (follows --fp16-unet, --bf16-unet ...)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def execute(cls, ckpt_name, weight_dtype) -> io.NodeOutput:
        return io.NodeOutput(load_native(full_path(PCDMS_FOLDER, ckpt_name), weight_dtype))

    @classmethod
    def validate_inputs(cls, ckpt_name):  # names only the file: see nodes/loaders.py
        return missing_model(PCDMS_FOLDER, ckpt_name) or True


def _seed_input() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                        tooltip="Seed of the VAE's posterior sample of the image(s) encoded here, as the official "
                                "code draws it. The sampler's noise has its own seed.")


def _vae_in() -> io.MultiType.Input:
    return io.MultiType.Input("vae", types=[io.Vae, PcdmsVae],
                              tooltip="The VAE the checkpoint was trained with: Load VAE with the SD 2.1-base VAE, or "
                                      "the PCDMs VAE Loader (the demo VAE).")


def inpaint_conditioning(model, vae, source, *, embedding=None, source_pose=None, target_pose=None,
                         source_pose_image=None, target_pose_image=None, seed=0, batch_size=1,
                         masked_latents: Optional[torch.Tensor] = None):
    """(positive, negative, latent) for a native stage-2 MODEL."""
    from .stages import _pose_images

    m = native_model(model, "inpaint")
    source_tokens(source)
    if m.pcdms_variant == "noprior" and embedding is not None:
        raise InputError("this MODEL is the no-prior stage 2, which takes no prior embedding: disconnect it (or load "
                         "a paper stage-2 file)")
    if m.pcdms_variant == "paper" and embedding is None:
        raise InputError("the paper stage-2 MODEL needs the prior's embedding: connect PCDMs Prior")
    sp = _pose_images(source_pose, source_pose_image, "source", source.size)
    tp = _pose_images(target_pose, target_pose_image, "target", source.size)
    w, h = source.size
    named = [("source images", source.batch), ("source poses", sp.shape[0]), ("target poses", tp.shape[0])]
    if embedding is not None:
        named.append(("prior embeddings", embedding.shape[0]))
    batch = common_batch(*named)
    vae_model = _load_vae(vae, (batch, 3, h, 2 * w))
    _check_vae_scale(m, vae_model)
    conds = inpaint_conditions(
        _projector(m), m.pcdms_variant, vae_model, source.pixels, sp, tp, source.tokens, embedding, size=source.size,
        pose_downscale=m.pose_downscale, generator=seed, masked_latents=masked_latents, num_images=batch_size,
    )
    positive, negative = _conditioning(conds, m.pcdms_stage, m.pcdms_variant)
    return positive, negative, _latent(conds.latent_shape, m.latent_format.scale_factor)


def refine_conditioning(model, vae, source, image, *, seed=0, batch_size=1, start="noise",
                        coarse_latents: Optional[torch.Tensor] = None):
    """(positive, negative, latent) for a native stage-3 MODEL; ``image`` is a ComfyUI IMAGE batch."""
    m = native_model(model, "refine")
    coarse = images_in(image)
    n = coarse.shape[0]
    tokens = source_tokens(source, n)
    w, h = source.size
    vae_model = _load_vae(vae, (n, 3, h, w))
    _check_vae_scale(m, vae_model)
    conds = refine_conditions(_projector(m), vae_model, coarse, tokens, size=source.size, generator=seed,
                              coarse_latents=coarse_latents, num_images=batch_size)
    positive, negative = _conditioning(conds, m.pcdms_stage, m.pcdms_variant)
    begin = conds.concat if start == "coarse image" else None
    return positive, negative, _latent(conds.latent_shape, m.latent_format.scale_factor, begin)


class PCDMsInpaintConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsInpaintConditioning",
            display_name="PCDMs Inpaint Conditioning",
            category=CATEGORY,
            description=(
                "Stage 2 on the native path: the positive and negative conditioning and the empty latent of the "
                "[source | target] canvas for KSampler with a stage-2 MODEL. The negative is the checkpoint's official "
                "unconditional branch. Decode the result with VAE Decode (or PCDMs VAE Decode), then PCDMs Crop Target."
            ),
            inputs=[
                io.Model.Input("model", tooltip="From PCDMs Load Stage as MODEL (a stage-2 file)."),
                _vae_in(),
                PcdmsSource.Input("source", tooltip="From PCDMs Encode Source."),
                PcdmsEmbedding.Input("embedding", optional=True, tooltip="From PCDMs Prior (paper checkpoint only)."),
                PoseKeypoint.Input("source_pose", optional=True, tooltip="Keypoints of the source person."),
                PoseKeypoint.Input("target_pose", optional=True, tooltip="Keypoints of the wanted pose."),
                io.Image.Input("source_pose_image", optional=True, tooltip="Instead of source_pose: a skeleton image."),
                io.Image.Input("target_pose_image", optional=True, tooltip="Instead of target_pose: a skeleton image."),
                _seed_input(),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per source."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="latent"),
            ],
        )

    @classmethod
    def execute(cls, model, vae, source, seed, batch_size, embedding=None, source_pose=None, target_pose=None,
                source_pose_image=None, target_pose_image=None) -> io.NodeOutput:
        with reported("PCDMs Inpaint Conditioning") as said:
            result = inpaint_conditioning(
                model, vae, source, embedding=embedding, source_pose=source_pose, target_pose=target_pose,
                source_pose_image=source_pose_image, target_pose_image=target_pose_image, seed=seed,
                batch_size=batch_size)
        return output(*result, said=said)


class PCDMsRefineConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsRefineConditioning",
            display_name="PCDMs Refine Conditioning",
            category=CATEGORY,
            description=(
                "Stage 3 on the native path: conditioning and latent for KSampler with a stage-3 MODEL, from the coarse "
                "image (e.g. stage 2's target half) and the source. The negative has zero context and zero coarse "
                "latents, as officially."
            ),
            inputs=[
                io.Model.Input("model", tooltip="From PCDMs Load Stage as MODEL (a stage-3 file)."),
                _vae_in(),
                PcdmsSource.Input("source", tooltip="From PCDMs Encode Source (the same source as stage 2)."),
                io.Image.Input("image", tooltip="The coarse image(s) to refine."),
                _seed_input(),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Refinements per image."),
                io.Combo.Input("start", options=["noise", "coarse image"], default="noise",
                               tooltip="The latent given to the sampler. noise (official): an empty latent, for "
                                       "denoise 1. coarse image: the coarse image's latent, for img2img with denoise "
                                       "below 1 (or KSampler Advanced starting part-way)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="latent"),
            ],
        )

    @classmethod
    def execute(cls, model, vae, source, image, seed, batch_size, start) -> io.NodeOutput:
        with reported("PCDMs Refine Conditioning") as said:
            result = refine_conditioning(model, vae, source, image, seed=seed, batch_size=batch_size, start=start)
        return output(*result, said=said)


class PCDMsCropTarget(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsCropTarget",
            display_name="PCDMs Crop Target",
            category=CATEGORY,
            description="The right half of a decoded [source | target] canvas: stage 2's result.",
            inputs=[io.Image.Input("canvas", tooltip="The decoded stage-2 canvas (twice as wide as high per half).")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, canvas) -> io.NodeOutput:
        if not torch.is_tensor(canvas) or canvas.ndim != 4 or canvas.shape[2] < 2:
            raise InputError("connect the decoded stage-2 canvas (an IMAGE) here")
        half = canvas.shape[2] // 2
        return io.NodeOutput(canvas[:, :, canvas.shape[2] - half:].contiguous())


class PCDMsVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsVAEDecode",
            display_name="PCDMs VAE Decode",
            category=CATEGORY,
            description="VAE Decode for the VAEs ComfyUI cannot build itself (the demo VAE); takes Load VAE's too.",
            inputs=[io.Latent.Input("samples", tooltip="The latent from KSampler on a PCDMs MODEL."), _vae_in()],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, samples, vae) -> io.NodeOutput:
        z = samples["samples"]
        vae_model = _load_vae(vae, (z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8))
        codec = vae_ops.as_codec(vae_model)
        check_finite_input(z, "latent to decode")
        with torch.no_grad():
            image = check_finite(vae_ops.decode(vae_model, z.float() * codec.scaling_factor), "inpaint",
                                 "the decoded image", vae=True)
        return io.NodeOutput(images_out(image))


NODES = [PCDMsNativeLoader, PCDMsInpaintConditioning, PCDMsRefineConditioning, PCDMsCropTarget, PCDMsVAEDecode]


# --- ComfyUI's own image encoders ------------------------------------------------------------------------------------

def _encoder_hints(clip_vision) -> dict:
    """What the weights do not tell (heads, layer-norm eps, activation), read from ComfyUI's built model, so
    models of any size work, not only the standard ones."""
    hints: dict = {}
    for module in clip_vision.model.modules():
        if "num_attention_heads" not in hints and isinstance(getattr(module, "heads", None), int):
            hints["num_attention_heads"] = module.heads
        if "layer_norm_eps" not in hints and isinstance(module, torch.nn.LayerNorm):
            hints["layer_norm_eps"] = float(module.eps)
        activation = getattr(module, "activation", None)
        if "hidden_act" not in hints and activation is not None:
            import comfy.clip_model

            names = [k for k, v in getattr(comfy.clip_model, "ACTIVATIONS", {}).items() if v is activation]
            if names:
                hints["hidden_act"] = names[0]
    return hints


def encoder_from_clip_vision(clip_vision, kind: str):
    """A core ``CLIP_VISION`` (Load CLIP Vision: CLIP ViT-H/14, or DINOv2-giant where ComfyUI loads it) as the
    ``ManagedModel`` our stages take: the same weights (shared, not copied) in PCDMs' own encoder, so PCDMs'
    preprocessing and features are exactly those of our loaders. Made once per CLIP_VISION object."""
    from pathlib import Path

    from ..pcdms_core.loading.encoders import image_encoder_from_weights
    from ..pcdms_core.loading.weights import WeightFile
    from .bridge import ManagedModel, load_dtype

    cached = getattr(clip_vision, "_pcdms_encoder", None)
    if cached is not None and cached.kind == kind:
        return cached
    if not hasattr(clip_vision, "get_sd"):
        raise InputError("connect a CLIP_VISION from Load CLIP Vision, or the PCDMs loader's output, here")
    tensors = {k: v.detach() for k, v in clip_vision.get_sd().items()}
    name = "CLIP_VISION from Load CLIP Vision"
    weights = WeightFile.from_tensors(Path(name), tensors)
    wanted = {"clip": "CLIP ViT-H/14 (the prior's encoder)", "dinov2": "DINOv2-giant (the stages' encoder)"}[kind]
    try:
        # ComfyUI keeps some layers in float32 and casts as it runs; ours compute in its choice for the role
        dtype = load_dtype("auto", "encoder")
        encoder = image_encoder_from_weights(weights, kind, config=_encoder_hints(clip_vision), dtype=dtype)
    except CheckpointError as exc:
        raise InputError(f"the CLIP_VISION connected to {kind} is not {wanted}: {exc}") from None
    managed = ManagedModel.wrap(encoder, "clip" if kind == "clip" else "dinov2", name, dtype)
    clip_vision._pcdms_encoder = managed
    return managed
