"""PCDMs (Progressive Conditional Diffusion Models, ICLR 2024) as a plain library: put the person of one image
into a new pose. Nothing here imports ComfyUI.

The three stages, each a function you can call alone::

    source ──CLIP──> sample_prior(source embedding, source pose, target pose) ──> target embedding
    source ──DINOv2──┬──> sample_inpaint([source | black], [source pose | target pose], embedding) ──> coarse
                     └──> sample_refine(coarse) ──> image

``PCDMsPipeline`` chains them. The package is grouped by concern: ``networks`` (the modules, with the official
state-dict names), ``stages`` (samplers, the one table of official defaults), ``loading`` (files), ``pose``
(keypoints and skeleton drawing), ``cpu`` (opt-in CPU speed-ups) and ``train`` (training, synthetic data,
evaluation; needs ``accelerate``). ``diffusers_glue`` is the one module that knows diffusers' internals.
"""

__version__ = "0.2.0"

from .errors import (
    CheckpointError,
    InputError,
    NumericalError,
    PCDMsError,
    PCDMsWarning,
    PoseError,
    reported_warnings,
)
from .images import as_uint8_batch, to_model_range, to_uint8
from .loading.checkpoints import (
    convert_checkpoint,
    inspect_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .loading.encoders import load_image_encoder
from .loading.vae import load_vae
from .networks.encoders import ImageEncoder, clip_crop_u8, preprocess
from .networks.inpaint import InpaintModel
from .networks.prior import PriorTransformer, from_clip_space, to_clip_space
from .networks.refine import RefineModel
from .networks.vae import LatentCodec, as_codec, decode, encode, encode_posterior, sample_posterior
from .pipeline import PCDMsPipeline, SourceFeatures, StageSettings, encode_source
from .pose.keypoints import Pose, align_pose, load_pose, pose_vector, poses_from_keypoints, render_pose
from .stages.defaults import DEFAULTS, stage_defaults
from .stages.inpaint import decode_canvas, encode_canvas, prepare_canvases, sample_inpaint
from .stages.loop import StepInfo, make_scheduler, rescale_guidance
from .stages.prior import sample_prior
from .stages.refine import encode_coarse, sample_refine

__all__ = [
    # errors and warnings
    "PCDMsError", "CheckpointError", "InputError", "PoseError", "NumericalError", "PCDMsWarning", "reported_warnings",
    # files
    "load_checkpoint", "inspect_checkpoint", "convert_checkpoint", "save_checkpoint", "load_vae",
    "load_image_encoder",
    # images and encoders
    "as_uint8_batch", "to_model_range", "to_uint8", "preprocess", "clip_crop_u8", "ImageEncoder",
    # poses
    "Pose", "load_pose", "pose_vector", "render_pose", "poses_from_keypoints", "align_pose",
    # VAE
    "LatentCodec", "as_codec", "encode", "decode", "encode_posterior", "sample_posterior",
    # stages
    "DEFAULTS", "stage_defaults", "make_scheduler", "rescale_guidance", "StepInfo",
    "PriorTransformer", "sample_prior", "to_clip_space", "from_clip_space",
    "InpaintModel", "prepare_canvases", "encode_canvas", "sample_inpaint", "decode_canvas",
    "RefineModel", "encode_coarse", "sample_refine",
    # the chain
    "PCDMsPipeline", "StageSettings", "SourceFeatures", "encode_source",
]
