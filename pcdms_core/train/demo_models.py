"""The demo models: small versions of every network the pipeline needs, trained on the synthetic set.

They ship in ``demo_models/`` (28 MiB in fp16) and are the default when no model is named: the CLI,
the ComfyUI loaders and the demo workflows use them. Their topology is the official one, scaled down:

* VAE: ``AutoencoderKL`` (widths 16, 32, 64) that downsamples by 4 (64 x 64 pixels to 4 x 16 x 16), trained
  on the set;
* CLIP and DINOv2 stand-ins: small ViTs with the official preprocessing, **frozen at a seeded random
  initialisation** (a random ViT keeps enough of an image's colours and layout for these tasks; training them
  would need a contrastive or self-supervised objective far beyond the demo's budget);
* prior: 4 blocks of width 128 over 128-wide embeddings (the CLIP stand-in's), with that embedding's own
  mean and std;
* inpainting (paper and no-prior variants) and refining UNets: SD-style ``UNet2DConditionModel`` with widths
  (32, 64, 128), attention at the two lowest levels, cross-attention width 128; pose encoder widths (8, 16, 32).

``build_*`` give randomly initialised networks (for training); ``demo_file`` the shipped files.
"""

from __future__ import annotations


import torch

from .. import diffusers_glue as glue
from ..loading.checkpoints import SD21_BASE_UNET
from ..networks.encoders import ImageEncoder
from ..networks.inpaint import InpaintModel
from ..networks.layers import ImageProjector, PoseEncoder, PoseEncoderConfig, ProjectorConfig
from ..networks.prior import PriorConfig, PriorTransformer
from ..networks.refine import RefineModel
from ..networks.vit import ClipVision, ClipVisionConfig, Dinov2, Dinov2Config

EMBED_DIM = 128
TOKEN_DIM = 64

VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 64], layers_per_block=1, act_fn="silu", latent_channels=4,
    norm_num_groups=8, sample_size=128, scaling_factor=1.0,
)
CLIP_CONFIG = ClipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                               patch_size=16, image_size=224, projection_dim=EMBED_DIM, hidden_act="gelu")
DINO_CONFIG = Dinov2Config(hidden_size=TOKEN_DIM, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                           image_size=224, mlp_hidden_size=128, use_swiglu_ffn=False)
UNET_CONFIG = dict(
    SD21_BASE_UNET,
    sample_size=16,
    block_out_channels=[32, 64, 128],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[1, 2, 4],
    layers_per_block=1,
    norm_num_groups=16,
    cross_attention_dim=EMBED_DIM,
)
POSE_WIDTHS = (8, 16, 32)
PRIOR_CONFIG = PriorConfig(num_attention_heads=4, attention_head_dim=32, num_layers=4, embedding_dim=EMBED_DIM,
                           pose_hidden_dim=128)


def seeded_init(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The stand-in encoders' fixed random weights: N(0, 1/fan_in) matrices, unit norms, small biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("lambda1"):
                p.fill_(1.0)
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return module.eval().requires_grad_(False)


def build_vae():
    return glue.AutoencoderKL(**glue.accepted_kwargs(glue.AutoencoderKL, VAE_CONFIG))


def build_clip(seed: int = 101) -> ImageEncoder:
    return ImageEncoder(seeded_init(ClipVision(CLIP_CONFIG), seed), "clip")


def build_dino(seed: int = 102) -> ImageEncoder:
    return ImageEncoder(seeded_init(Dinov2(DINO_CONFIG), seed), "dinov2")


def build_prior(embed_mean: float = 0.0, embed_std: float = 1.0) -> PriorTransformer:
    from dataclasses import replace

    return PriorTransformer(replace(PRIOR_CONFIG, embed_mean=float(embed_mean), embed_std=float(embed_std)))


def unet_config(stage: str, variant: str = "paper") -> dict:
    if stage == "refine":
        return dict(UNET_CONFIG, in_channels=8)
    cfg = dict(UNET_CONFIG, in_channels=9)
    if variant == "paper":
        cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=EMBED_DIM)
    return cfg


def build_inpaint(variant: str = "paper") -> InpaintModel:
    unet = glue.UNet2DConditionModel(**glue.accepted_kwargs(glue.UNet2DConditionModel, unet_config("inpaint", variant)))
    pose = PoseEncoder(PoseEncoderConfig(out_channels=UNET_CONFIG["block_out_channels"][0], widths=POSE_WIDTHS))
    proj = ImageProjector(ProjectorConfig(in_dim=TOKEN_DIM, hidden_dim=TOKEN_DIM, out_dim=EMBED_DIM))
    return InpaintModel(unet, pose, proj, variant)


def build_refine() -> RefineModel:
    unet = glue.UNet2DConditionModel(**glue.accepted_kwargs(glue.UNet2DConditionModel, unet_config("refine")))
    return RefineModel(unet, ImageProjector(ProjectorConfig(in_dim=TOKEN_DIM, hidden_dim=TOKEN_DIM, out_dim=EMBED_DIM)))
