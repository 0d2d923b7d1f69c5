"""Loader nodes: PCDMs checkpoints, the two image encoders, and a VAE loader for diffusers-format VAEs."""

from __future__ import annotations

from comfy_api.latest import io

from ..pcdms_core.loading.checkpoints import describe, load_checkpoint
from ..pcdms_core.loading.encoders import load_image_encoder
from ..pcdms_core.loading.vae import load_vae
from .bridge import DTYPE_CHOICES, PCDMS_FOLDER, ManagedModel, full_path, load_dtype, missing_model, model_files
from .types import PcdmsClip, PcdmsDino, PcdmsModel, PcdmsVae

CATEGORY = "PCDMs/loaders"
DTYPE_TOOLTIP = ("Weights dtype. auto: ComfyUI's choice for this kind of model on this device (it follows "
                 "--bf16-unet, --fp32-vae, --fp16-text-enc and the like; fp32 on a CPU without fast half kernels).")


def _dtype_input() -> io.Combo.Input:
    return io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto", tooltip=DTYPE_TOOLTIP)


# Queue-time file checks. Each ``validate_inputs`` names only its file input: ComfyUI then leaves that input's
# option-list check to it (so the message says which file is missing and which folder it goes in, not "value
# not in list") and reports a failure once, against that input.


class PCDMsCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsCheckpointLoader",
            display_name="PCDMs Checkpoint Loader",
            category=CATEGORY,
            description=(
                "Loads one PCDMs stage from models/pcdms: an official DeepSpeed .pt (s1_512.pt, s2_512.pt, "
                "s3_512.pt, PCDMs_ckpt.pt) or a converted .safetensors. The stage and variant (prior, paper or no-prior "
                "inpainting, refining) are read from the file's contents, not its name."
            ),
            inputs=[
                io.Combo.Input("ckpt_name", options=model_files(PCDMS_FOLDER),
                               tooltip="A PCDMs checkpoint in models/pcdms (or a pcdms path of extra_model_paths.yaml)."),
                _dtype_input(),
            ],
            outputs=[
                PcdmsModel.Output(display_name="model", tooltip="Connect to the PCDMs node of its stage."),
                io.String.Output(display_name="info", tooltip="What the file is: stage, variant, config, dtype, size."),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name, dtype) -> io.NodeOutput:
        dt = load_dtype(dtype)
        model = load_checkpoint(full_path(PCDMS_FOLDER, ckpt_name), dtype=dt)
        info = model.checkpoint_info
        return io.NodeOutput(ManagedModel.wrap(model, info.stage, ckpt_name, dt, info), describe(info))

    @classmethod
    def validate_inputs(cls, ckpt_name):
        return missing_model(PCDMS_FOLDER, ckpt_name) or True


class _EncoderLoader(io.ComfyNode):
    KIND = ""

    @classmethod
    def execute(cls, encoder_name, dtype) -> io.NodeOutput:
        dt = load_dtype(dtype, "encoder")
        encoder = load_image_encoder(full_path("clip_vision", encoder_name), cls.KIND, dtype=dt)
        return io.NodeOutput(ManagedModel.wrap(encoder, cls.KIND, encoder_name, dt))

    @classmethod
    def validate_inputs(cls, encoder_name):
        return missing_model("clip_vision", encoder_name) or True


class PCDMsCLIPVisionLoader(_EncoderLoader):
    KIND = "clip"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsCLIPVisionLoader",
            display_name="PCDMs CLIP Vision Loader (ViT-H/14)",
            category=CATEGORY,
            description=(
                "Loads CLIP ViT-H/14 (the prior's image encoder) from models/clip_vision, with PCDMs' exact "
                "preprocessing, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors. ComfyUI's own CLIP Vision loader "
                "preprocesses differently, so use this one for PCDMs."
            ),
            inputs=[
                io.Combo.Input("encoder_name", options=model_files("clip_vision"),
                               tooltip="CLIP ViT-H/14 vision model (transformers or OpenCLIP layout) in models/clip_vision."),
                _dtype_input(),
            ],
            outputs=[PcdmsClip.Output(display_name="clip")],
        )


class PCDMsDINOv2Loader(_EncoderLoader):
    KIND = "dinov2"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsDINOv2Loader",
            display_name="PCDMs DINOv2 Loader",
            category=CATEGORY,
            description=(
                "Loads DINOv2-giant (the source encoder of stages 2 and 3) from models/clip_vision, with PCDMs' "
                "exact preprocessing (CLIP statistics, 224 px, the official position-table interpolation): a "
                "model.safetensors from facebook/dinov2-giant, alone or in its folder."
            ),
            inputs=[
                io.Combo.Input("encoder_name", options=model_files("clip_vision"),
                               tooltip="DINOv2 weights in models/clip_vision (a file, or model.safetensors inside its folder)."),
                _dtype_input(),
            ],
            outputs=[PcdmsDino.Output(display_name="dino")],
        )


class PCDMsVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsVAELoader",
            display_name="PCDMs VAE Loader",
            category=CATEGORY,
            description=(
                "Loads a VAE from models/vae with diffusers, including diffusers-format files and small VAEs that "
                "ComfyUI's Load VAE cannot build (it only builds full-size SD VAEs). For the SD 2.1-base VAE either "
                "loader works and gives the same numbers."
            ),
            inputs=[
                io.Combo.Input("vae_name", options=model_files("vae"), tooltip="A VAE file in models/vae."),
                _dtype_input(),
            ],
            outputs=[PcdmsVae.Output(display_name="vae")],
        )

    @classmethod
    def execute(cls, vae_name, dtype) -> io.NodeOutput:
        dt = load_dtype(dtype, "vae")
        vae = load_vae(full_path("vae", vae_name), dtype=dt)
        return io.NodeOutput(ManagedModel.wrap(vae, "vae", vae_name, dt))

    @classmethod
    def validate_inputs(cls, vae_name):
        return missing_model("vae", vae_name) or True


NODES = [PCDMsCheckpointLoader, PCDMsCLIPVisionLoader, PCDMsDINOv2Loader, PCDMsVAELoader]
