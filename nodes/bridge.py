"""ComfyUI plumbing shared by the nodes: model folders, dtypes, ModelPatcher holders, the VAE adapter,
progress and previews, and IMAGE conversions. No PCDMs maths lives here (that is ``pcdms_core``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

import comfy.latent_formats
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import latent_preview
from comfy_api.latest import io

from ..pcdms_core import images as core_images
from ..pcdms_core.devices import cpu_has_fast_half
from ..pcdms_core.errors import InputError, reported_warnings
from ..pcdms_core.bundled import DEMO_DIR
from ..pcdms_core.networks.preview import latent_rgb_factors
from ..pcdms_core.networks.vae import LatentCodec

PCDMS_FOLDER = "pcdms"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_CHOICES = ["auto", "fp16", "bf16", "fp32"]


DEMO_MODELS = DEMO_DIR


def _add_path(folder: str, path: str) -> None:
    exts = set(folder_paths.supported_pt_extensions)
    if folder in folder_paths.folder_names_and_paths:
        paths, old_exts = folder_paths.folder_names_and_paths[folder]
        paths = list(paths)
        if path not in paths:
            paths.append(path)
        folder_paths.folder_names_and_paths[folder] = (paths, set(old_exts) | exts)
    else:
        folder_paths.folder_names_and_paths[folder] = ([path], exts)


def register_model_folder() -> None:
    """``models/pcdms``, merged with whatever extra_model_paths.yaml already set for "pcdms".

    The bundled demo models are not registered with ComfyUI: a demo encoder or VAE in the shared
    clip_vision / vae lists would show in core Load CLIP Vision and Load VAE, which cannot build them.
    Our loaders add them to their own lists (``model_files``)."""
    _add_path(PCDMS_FOLDER, os.path.join(folder_paths.models_dir, PCDMS_FOLDER))


EXAMPLE_INPUTS = DEMO_DIR / "examples"


def install_example_inputs() -> None:
    """Copy the example source image and poses the workflows use into ComfyUI's input folder, once."""
    try:
        target = Path(folder_paths.get_input_directory())
        for src in EXAMPLE_INPUTS.glob("pcdms_example_*"):
            if not (target / src.name).exists():
                shutil.copyfile(src, target / src.name)
    except OSError as exc:  # a read-only input folder must not stop the pack from loading
        logging.warning("PCDMs: could not copy the example inputs to ComfyUI's input folder: %s", exc)


def demo_files(folder: str) -> dict[str, Path]:
    """The pack's bundled demo models for one of our loaders' folders: {list name: path}."""
    base = DEMO_MODELS / folder
    if not base.is_dir():
        return {}
    exts = folder_paths.supported_pt_extensions
    return {p.name: p for p in sorted(base.iterdir()) if p.is_file() and p.suffix in exts}


def model_files(folder: str) -> list[str]:
    """A loader's choices: the files ComfyUI knows in ``folder``, then the bundled demo models for it."""
    files = list(folder_paths.get_filename_list(folder))
    return files + [name for name in demo_files(folder) if name not in files]


def missing_model(folder: str, name) -> str | None:
    """Why ``name`` cannot be loaded from ``folder`` (naming the folder to put it in), or None when it can."""
    if name is None:  # a linked value, only known at run time
        return None
    if folder_paths.get_full_path(folder, name) is not None or name in demo_files(folder):
        return None
    return (
        f"model file {name!r} was not found in models/{folder} (or the {folder} paths of extra_model_paths.yaml); "
        "put it there and press R to refresh the lists"
    )


def full_path(folder: str, name: str) -> str:
    """The file's path, or an error that names the folder to put it in."""
    path = folder_paths.get_full_path(folder, name)
    if path is None and name in demo_files(folder):
        path = str(demo_files(folder)[name])
    if path is None:
        raise InputError(missing_model(folder, name))
    return path


# The model roles, as ComfyUI assigns devices and dtypes: the diffusion networks (prior, UNets), the image encoders
# (ComfyUI's text-encoder / CLIP-vision choice) and the VAE.
ROLE_OF_KIND = {"prior": "unet", "inpaint": "unet", "refine": "unet", "clip": "encoder", "dinov2": "encoder",
                "vae": "vae"}


def role_devices(role: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) that ComfyUI uses for models of ``role``."""
    if role == "encoder":
        return mm.text_encoder_device(), mm.text_encoder_offload_device()
    if role == "vae":
        return mm.vae_device(), mm.vae_offload_device()
    return mm.get_torch_device(), mm.unet_offload_device()


def load_dtype(choice: str, role: str = "unet") -> torch.dtype:
    """The loader's dtype: the user's, or for "auto" ComfyUI's choice for the role on its device (so --bf16-unet,
    --fp32-vae, --fp16-text-enc and the like apply). ComfyUI stores some models in half precision on a CPU and
    computes them in fp32; our networks compute in their storage dtype, so there "auto" gives fp32 unless the
    CPU has fast kernels for the half type."""
    if choice != "auto":
        return DTYPES[choice]
    device = role_devices(role)[0]
    if role == "encoder":
        dtype = mm.text_encoder_dtype(device)
    elif role == "vae":
        dtype = mm.vae_dtype(device, [torch.bfloat16, torch.float32])  # the SD VAE overflows in fp16
    else:
        dtype = mm.unet_dtype(device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        dtype = torch.float16  # fp8 storage choices: our networks compute in their storage dtype
    if torch.device(device).type == "cpu" and dtype != torch.float32 and not cpu_has_fast_half(dtype):
        return torch.float32
    return dtype


class ModelHolder(torch.nn.Module):
    """A plain module around one of our models, with the settable ``device`` ModelPatcher needs."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner
        self.device = torch.device("cpu")
        self._dtype = dtype

    def get_dtype(self) -> torch.dtype:
        return self._dtype


@dataclass
class ManagedModel:
    """What our loaders output: a ModelPatcher (ComfyUI loads and offloads it) plus what the file is."""

    patcher: Any
    kind: str  # "prior" | "inpaint" | "refine" | "clip" | "dinov2" | "vae"
    name: str
    info: Any = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def wrap(cls, model: torch.nn.Module, kind: str, name: str, dtype: torch.dtype, info: Any = None) -> "ManagedModel":
        """A ModelPatcher on the devices ComfyUI gives the model's role (``ROLE_OF_KIND``)."""
        load_device, offload_device = role_devices(ROLE_OF_KIND.get(kind, "unet"))
        patcher = comfy.model_patcher.ModelPatcher(ModelHolder(model, dtype), load_device=load_device,
                                                   offload_device=offload_device)
        return cls(patcher=patcher, kind=kind, name=name, info=info)

    def load(self, memory_required: int = 0) -> torch.nn.Module:
        """Bring the model to its device through ComfyUI's model management; returns the inner model."""
        mm.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)
        return self.patcher.model.inner

    @property
    def dtype(self) -> torch.dtype:
        return self.patcher.model.get_dtype()


def working_memory(batch: int, latent_h: int, latent_w: int, dtype: torch.dtype) -> int:
    """A rough activation budget for a UNet step (ComfyUI frees this much before loading)."""
    return int(batch * latent_h * latent_w * 64 * 1024 * mm.dtype_size(dtype) / 4) + 256 * 1024 * 1024


# --- VAE ---------------------------------------------------------------------------------------------------------

class ComfyVAECodec(LatentCodec):
    """ComfyUI's ``VAE`` (from Load VAE) seen by the stages as a ``LatentCodec``.

    ComfyUI's own ``VAE.encode`` returns the posterior mean; PCDMs samples the posterior with the run's
    generator, so the encoder's raw moments are taken from ``first_stage_model`` and ``pcdms_core`` does the
    sampling. ``decode`` is ComfyUI's decoder without its [0, 1] post-processing.
    """

    scaling_factor = 0.18215  # the SD 2.1 latent scale (ComfyUI keeps it in the model's latent format)

    def __init__(self, vae):
        fsm = getattr(vae, "first_stage_model", None)
        if getattr(vae, "latent_channels", None) != 4 or not all(hasattr(fsm, a) for a in ("encoder", "quant_conv", "decode")):
            raise InputError(
                "this VAE is not a Stable Diffusion KL-f8 VAE; PCDMs needs the SD 2.1-base VAE (4 latent channels)"
            )
        self.vae = vae
        self.downscale = int(vae.downscale_ratio)

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.vae_dtype

    def moments(self, pixels: torch.Tensor) -> torch.Tensor:
        fsm = self.vae.first_stage_model
        return fsm.quant_conv(fsm.encoder(pixels))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.first_stage_model.decode(z)


def vae_for_stage(vae, pixel_shape: tuple[int, ...]) -> tuple[Any, Any, int]:
    """For a stage's VAE input (ComfyUI's VAE, or ours from the PCDMs VAE Loader): what ``pcdms_core`` calls,
    the ModelPatcher to load with the stage's model, and the memory to keep free for encoding and decoding."""
    b, _, h, w = pixel_shape
    if isinstance(vae, ManagedModel):
        if vae.kind != "vae":
            raise InputError(f"a {vae.kind} model was connected where a VAE is needed")
        return vae.patcher.model.inner, vae.patcher, b * h * w * 2048 * mm.dtype_size(vae.dtype)
    codec = ComfyVAECodec(vae)
    latent = (b, 4, h // codec.downscale, w // codec.downscale)
    memory = vae.memory_used_encode(pixel_shape, codec.dtype) + vae.memory_used_decode(latent, codec.dtype)
    return codec, vae.patcher, int(memory)


# --- the encoded source -------------------------------------------------------------------------------------------

def source_tokens(source, images: Optional[int] = None) -> torch.Tensor:
    """The source's DINOv2 tokens (an error when it was encoded without DINOv2). With ``images``, the tokens for that
    many images to refine: one source serves them all, or each source a whole number of them, in order."""
    if source.tokens is None:
        raise InputError("the source has no DINOv2 tokens: connect a DINOv2 loader to PCDMs Encode Source")
    b = source.batch
    if images is None or images == b or b == 1:
        return source.tokens
    if images % b:
        raise InputError(f"{images} images to refine but {b} sources: give one source, or a whole number of images "
                         "per source")
    return source.tokens.repeat_interleave(images // b, dim=0)


# --- progress, previews, images -------------------------------------------------------------------------------------

def latent_format(vae=None):
    """ComfyUI's latent format for previews of latents made with ``vae``. SD 1.5's colour factors suit the
    SD KL-f8 VAE (the only one ComfyUI's Load VAE can give the stages); for a VAE from the PCDMs VAE Loader the
    factors are fitted to that VAE (``pcdms_core.networks.preview``) once and kept with it, and no TAESD (an SD
    approximation) is used."""
    fmt = comfy.latent_formats.SD15()
    if not (isinstance(vae, ManagedModel) and vae.kind == "vae"):
        return fmt
    if "latent_rgb" not in vae.extra:
        vae.extra["latent_rgb"] = latent_rgb_factors(vae.patcher.model.inner)
    fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias = vae.extra["latent_rgb"]
    fmt.taesd_decoder_name = None
    return fmt


def step_callback(preview: bool = True, vae=None):
    """One per-step callback: ComfyUI's progress bar (which is also the Cancel check) and a latent preview
    in the colours of ``vae`` (the stage's VAE input; SD 1.5's when not given)."""
    pbar = comfy.utils.ProgressBar(1)
    previewer = []  # made at the first step, when the stage's models are loaded

    def callback(info) -> None:
        mm.throw_exception_if_processing_interrupted()
        image = None
        if preview and info.denoised is not None:
            if not previewer:
                previewer.append(latent_preview.get_previewer(mm.get_torch_device(), latent_format(vae)))
            if previewer[0] is not None:
                image = previewer[0].decode_latent_to_preview_image("JPEG", info.denoised.float())
        pbar.update_absolute(info.step + 1, info.total, image)

    return callback


def images_in(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` floats to our uint8 ``[B, 3, H, W]`` (rounded, as the official 8-bit files)."""
    if not torch.is_tensor(image) or image.ndim != 4:
        raise InputError(f"expected an IMAGE batch [B, H, W, C], got {getattr(image, 'shape', type(image))}")
    return core_images.as_uint8_batch(image.movedim(-1, 1))


def images_out(bchw: torch.Tensor) -> torch.Tensor:
    """Our ``[B, 3, H, W]`` in [0, 1] to a ComfyUI IMAGE on the intermediate device."""
    return bchw.float().movedim(1, -1).contiguous().to(mm.intermediate_device())


# --- warnings on the node ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def reported(node: str):
    """Collect the PCDMs warnings of the work inside (a distorted input, a prior that is not used): each is
    logged once and listed, so the node can show them too (``output``)."""
    said: list[str] = []

    def report(text: str) -> None:
        said.append(text)
        logging.warning("%s: %s", node, text)

    with reported_warnings(report):
        yield said


def output(*values, said: list[str], notes: tuple[str, ...] = ()) -> io.NodeOutput:
    """The node's outputs, with its warnings (and ``notes``: what the node did that a user may not expect) as text
    on the node."""
    text = [*notes, *("warning: " + m for m in said)]
    return io.NodeOutput(*values, ui={"text": text} if text else None)
