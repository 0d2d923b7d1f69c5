"""The one place that knows about diffusers' internals (a leaf: it imports nothing else of ``pcdms_core``).

Everything else in ``pcdms_core`` imports diffusers classes from here, so when a library moves a module or
changes a signature there is one file to mend. What lives here:

* import paths of the diffusers building blocks we reuse (transformer block, timestep embeddings, UNet, VAE,
  schedulers);
* building those classes from a plain config dict, keeping only the keys the installed version accepts;
* calling ``scheduler.step`` with the keyword arguments the scheduler takes;
* the LDM-to-diffusers key conversion for single-file VAEs.

(The image encoders are our own modules, see ``vit``: transformers 5 changed their weight layout.)
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

# --- diffusers ---------------------------------------------------------------------------------------------
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401  (re-exported)
from diffusers.models.attention import BasicTransformerBlock  # noqa: F401
from diffusers.models.attention_processor import Attention  # noqa: F401
from diffusers.models.embeddings import TimestepEmbedding, Timesteps  # noqa: F401
from diffusers.models.upsampling import Upsample2D  # noqa: F401
from diffusers import (  # noqa: F401
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    UnCLIPScheduler,
    UniPCMultistepScheduler,
)


def accepted_kwargs(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``config`` that ``cls.__init__`` accepts (drops ``_class_name`` and keys of other versions)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in config.items() if k in params and not k.startswith("_")}


def build_unet(config: dict[str, Any]) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` from a diffusers-style config dict (wrap in ``loading.weights.empty_weights``
    for meta parameters)."""
    return UNet2DConditionModel(**accepted_kwargs(UNet2DConditionModel, config))


def build_vae(config: dict[str, Any]) -> AutoencoderKL:
    """An ``AutoencoderKL`` from a diffusers-style config dict."""
    return AutoencoderKL(**accepted_kwargs(AutoencoderKL, config))


def transformer_block(dim: int, heads: int, head_dim: int, dropout: float) -> BasicTransformerBlock:
    """The prior's block: pre-LayerNorm self-attention (with biases) and a plain-GELU feed-forward."""
    return BasicTransformerBlock(
        dim, heads, head_dim, dropout=dropout, activation_fn="gelu", attention_bias=True
    )


# --- schedulers ------------------------------------------------------------------------------------------------

SCHEDULER_CLASSES: dict[str, type] = {
    "unclip": UnCLIPScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "unipc": UniPCMultistepScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "heun": HeunDiscreteScheduler,
}


def make_scheduler_instance(name: str, settings: dict[str, Any]):
    cls = SCHEDULER_CLASSES[name]
    return cls(**accepted_kwargs(cls, settings))


def scheduler_step(scheduler, model_output, timestep, sample, *, generator=None, prev_timestep=None, eta=0.0):
    """``scheduler.step`` with only the keyword arguments this scheduler takes; returns the step output."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in params:
        kwargs["generator"] = generator
    if "prev_timestep" in params:
        kwargs["prev_timestep"] = prev_timestep
    if "eta" in params:
        kwargs["eta"] = eta
    return scheduler.step(model_output, timestep, sample, return_dict=True, **kwargs)


# --- single-file VAE ---------------------------------------------------------------------------------------------

def convert_ldm_vae_state_dict(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Original (LDM / ComfyUI) VAE key names to diffusers' ``AutoencoderKL`` names."""
    try:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    except ImportError as exc:  # pragma: no cover - depends on the installed diffusers
        raise RuntimeError(
            "this diffusers version cannot convert original-format VAE files; use a diffusers VAE folder"
        ) from exc
    return convert_ldm_vae_checkpoint(state_dict, config)
