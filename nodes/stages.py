"""The stage nodes: encode the source once, then prior -> inpaint -> refine. Each takes and returns standard
batches, so other nodes can sit between them."""

from __future__ import annotations

from typing import Optional

import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..pcdms_core import (
    DEFAULTS,
    InputError,
    SourceFeatures,
    encode_source,
    pose_vector,
    poses_from_keypoints,
    render_pose,
    sample_inpaint,
    sample_prior,
    sample_refine,
    to_uint8,
)
from ..pcdms_core.images import check_size
from ..pcdms_core.pipeline import warn_unused_prior
from ..pcdms_core.seeding import MAX_SEED
from ..pcdms_core.stages.defaults import OFFICIAL_SIZE
from ..pcdms_core.stages.loop import (
    PRIOR_SCHEDULERS, UNET_SCHEDULERS, check_stage_settings, common_batch, steps_run,
)
from .bridge import (
    ManagedModel, images_in, images_out, output, reported, source_tokens, step_callback, vae_for_stage, working_memory,
)
from .types import PcdmsClip, PcdmsDino, PcdmsEmbedding, PcdmsModel, PcdmsSource, PcdmsVae, PoseKeypoint

CATEGORY = "PCDMs"

STAGE_NAMES = {"prior": "PCDMs Prior", "inpaint": "PCDMs Inpaint", "refine": "PCDMs Refine"}


def _seed() -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                        tooltip="The same seed gives the same image on the same device.")


def _steps(default: int, tip: str) -> io.Int.Input:
    return io.Int.Input("steps", default=default, min=1, max=1000, tooltip=tip)


def _cfg(default: float, tip: str) -> io.Float.Input:
    return io.Float.Input("cfg", default=default, min=0.0, max=30.0, step=0.1, round=0.01, tooltip=tip)


def _vae_input() -> io.MultiType.Input:
    return io.MultiType.Input(
        "vae", types=[io.Vae, PcdmsVae],
        tooltip="The SD 2.1-base VAE, from ComfyUI's Load VAE or the PCDMs VAE Loader.",
    )


def _stage_model(model: ManagedModel, stage: str) -> ManagedModel:
    if not isinstance(model, ManagedModel) or model.kind != stage:
        got = getattr(model, "info", None)
        what = got.title if got is not None else getattr(model, "kind", type(model).__name__)
        raise InputError(
            f"{STAGE_NAMES[stage]} got {getattr(model, 'name', 'a model')!r}, which is a {what} checkpoint: connect "
            f"the checkpoint loader that holds the {stage} stage's file"
        )
    return model


class PCDMsEncodeSource(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsEncodeSource",
            display_name="PCDMs Encode Source",
            category=CATEGORY,
            description=(
                "Encodes the source person once for all stages: DINOv2 tokens for inpainting and refining, and the "
                "CLIP embedding for the prior (connect clip when you use the prior). The image is stretched to the "
                "working size, as the official code does; the stages work at that size."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The source person (a batch gives one source per image)."),
                io.MultiType.Input("dino", types=[PcdmsDino, io.ClipVision],
                                   tooltip="DINOv2-giant: from PCDMs DINOv2 Loader, or core Load CLIP Vision."),
                io.MultiType.Input("clip", types=[PcdmsClip, io.ClipVision], optional=True,
                                   tooltip="CLIP ViT-H/14, needed by the prior: from PCDMs CLIP Vision Loader, or core "
                                           "Load CLIP Vision (clip_vision_h.safetensors)."),
                io.Int.Input("width", default=OFFICIAL_SIZE[0], min=8, max=2048, step=8,
                             tooltip="Working width of one half of the canvas, a multiple of 8 (official: 512)."),
                io.Int.Input("height", default=OFFICIAL_SIZE[1], min=8, max=2048, step=8,
                             tooltip="Working height (official: 512; the models were trained on square halves)."),
            ],
            outputs=[PcdmsSource.Output(display_name="source")],
        )

    @classmethod
    def execute(cls, image, dino, width, height, clip=None) -> io.NodeOutput:
        with reported("PCDMs Encode Source") as said:
            source = run_encode(image, dino, clip, width=width, height=height)
        return output(source, said=said)


def _encoder(model: Optional[ManagedModel], kind: str) -> Optional[ManagedModel]:
    if model is not None and not isinstance(model, ManagedModel) and hasattr(model, "get_sd"):
        from .native import encoder_from_clip_vision  # core Load CLIP Vision's model

        return encoder_from_clip_vision(model, kind)
    if model is not None and (not isinstance(model, ManagedModel) or model.kind != kind):
        want = {"clip": "PCDMs CLIP Vision Loader", "dinov2": "PCDMs DINOv2 Loader"}[kind]
        raise InputError(f"connect the output of {want} (or of core Load CLIP Vision) here")
    return model


def run_encode(image, dino, clip, *, width: int, height: int) -> SourceFeatures:
    dino, clip = _encoder(dino, "dinov2"), _encoder(clip, "clip")
    if dino is None:
        raise InputError("connect the output of PCDMs DINOv2 Loader to dino")
    pixels, size = images_in(image), check_size((width, height), 8, "working size")  # before any loading
    managed = [m for m in (dino, clip) if m is not None]
    mm.load_models_gpu([m.patcher for m in managed], force_full_load=True)
    # CLIP reads the image at the working size too: the official stage 1 and stages 2-3 both use 512.
    features = encode_source(
        pixels, dino.patcher.model.inner, clip.patcher.model.inner if clip is not None else None,
        size=size, prior_size=size,
    )
    features.tokens = features.tokens.to(mm.intermediate_device())
    if features.clip_embedding is not None:
        features.clip_embedding = features.clip_embedding.to(mm.intermediate_device())
    return features


def run_prior(model: ManagedModel, source: SourceFeatures, source_pose, target_pose, *, seed, steps, cfg, scheduler):
    model = _stage_model(model, "prior")
    if source.clip_embedding is None:
        raise InputError("the prior needs the source's CLIP embedding: connect a CLIP loader to PCDMs Encode Source")
    check_stage_settings("prior", steps=steps, guidance_scale=cfg, scheduler=scheduler, seed=seed)
    src_poses = poses_from_keypoints(source_pose)
    tgt_poses = poses_from_keypoints(target_pose)
    prior = model.load()
    embedding = sample_prior(
        prior, source.clip_embedding, pose_vector(src_poses), pose_vector(tgt_poses), steps=steps,
        guidance_scale=cfg, scheduler=scheduler,
        generator=seed, callback=step_callback(preview=False),
    )
    return embedding.to(mm.intermediate_device())


class PCDMsPrior(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsPrior",
            display_name="PCDMs Prior",
            category=CATEGORY,
            description=(
                "Stage 1: predicts the CLIP embedding of the person in the target pose, from the source's embedding "
                "and both poses. Feeds the paper inpainting model (the no-prior checkpoint does not use it)."
            ),
            inputs=[
                PcdmsModel.Input("model", tooltip="A stage-1 prior checkpoint (s1_*.pt)."),
                PcdmsSource.Input("source", tooltip="From PCDMs Encode Source, with a CLIP loader connected."),
                PoseKeypoint.Input("source_pose", tooltip="Keypoints of the source person (DWPose / OpenPose / PCDMs Load Pose)."),
                PoseKeypoint.Input("target_pose", tooltip="Keypoints of the wanted pose; several frames give several targets."),
                _seed(),
                _steps(DEFAULTS["prior"].steps, f"Sampling steps (official: {DEFAULTS['prior'].steps})."),
                _cfg(DEFAULTS["prior"].guidance_scale, "Guidance; the official runs use none (1.0). Above 1 the "
                     "unconditional branch has zero image embedding and zero pose tokens."),
                io.Combo.Input("scheduler", options=list(PRIOR_SCHEDULERS), default=DEFAULTS["prior"].scheduler,
                               tooltip="unclip is the official sampler."),
            ],
            outputs=[PcdmsEmbedding.Output(display_name="embedding")],
        )

    @classmethod
    def execute(cls, model, source, source_pose, target_pose, seed, steps, cfg, scheduler) -> io.NodeOutput:
        with reported("PCDMs Prior") as said:
            embedding = run_prior(model, source, source_pose, target_pose, seed=seed, steps=steps, cfg=cfg,
                                  scheduler=scheduler)
        return output(embedding, said=said)


def _pose_images(keypoints, image, what: str, size) -> Optional[torch.Tensor]:
    if image is not None:
        return images_in(image)
    if keypoints is not None:
        return torch.stack([render_pose(p, size) for p in poses_from_keypoints(keypoints)])
    raise InputError(f"connect the {what} pose: keypoints ({what}_pose) or a skeleton image ({what}_pose_image)")


def run_inpaint(model, vae, source: SourceFeatures, *, embedding=None, source_pose=None, target_pose=None,
                source_pose_image=None, target_pose_image=None, seed, steps, cfg, scheduler, batch_size):
    model = _stage_model(model, "inpaint")
    variant = model.info.variant
    source_tokens(source)
    if variant == "paper" and embedding is None:
        raise InputError("the paper inpainting checkpoint needs the prior's embedding: connect PCDMs Prior")
    if variant == "noprior" and embedding is not None:
        raise InputError(
            f"{model.name} is the no-prior stage-2 checkpoint (like PCDMs_ckpt.pt), which takes no prior embedding: "
            "disconnect the embedding input (PCDMs Prior and a CLIP loader are not needed with it), or load the paper "
            "stage-2 checkpoint (s2_512.pt) to use the prior"
        )
    scheduler = DEFAULTS[variant].scheduler if scheduler == "auto" else scheduler
    check_stage_settings(variant, steps=steps, guidance_scale=cfg, scheduler=scheduler, num_images=batch_size,
                         seed=seed)
    sp = _pose_images(source_pose, source_pose_image, "source", source.size)
    tp = _pose_images(target_pose, target_pose_image, "target", source.size)
    named = [("source images", source.batch), ("source poses", sp.shape[0]), ("target poses", tp.shape[0])]
    if embedding is not None:
        named.append(("prior embeddings", embedding.shape[0]))
    batch = common_batch(*named)
    w, h = source.size
    vae_model, vae_patcher, vae_memory = vae_for_stage(vae, (batch * batch_size, 3, h, 2 * w))
    memory = working_memory(2 * batch * batch_size, h // 8, 2 * w // 8, model.dtype) + vae_memory
    mm.load_models_gpu([model.patcher, vae_patcher], memory_required=memory, force_full_load=True)
    result = sample_inpaint(
        model.patcher.model.inner, vae_model, source.pixels, sp, tp, source.tokens, embedding, size=source.size,
        steps=steps, guidance_scale=cfg, scheduler=scheduler,
        generator=seed, num_images=batch_size, callback=step_callback(vae=vae),
    )
    return result


class PCDMsInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsInpaint",
            display_name="PCDMs Inpaint",
            category=CATEGORY,
            description=(
                "Stage 2: draws the source person in the target pose (source and target side by side, the right half "
                "is the result). Works with the paper checkpoint (needs the prior's embedding) and the released no-prior "
                "checkpoint PCDMs_ckpt.pt (no prior). Poses come as keypoints (rendered here) or as skeleton images."
            ),
            inputs=[
                PcdmsModel.Input("model", tooltip="A stage-2 checkpoint: s2_512.pt (paper) or PCDMs_ckpt.pt (no prior)."),
                _vae_input(),
                PcdmsSource.Input("source", tooltip="From PCDMs Encode Source."),
                PcdmsEmbedding.Input("embedding", optional=True, tooltip="From PCDMs Prior (paper checkpoint only)."),
                PoseKeypoint.Input("source_pose", optional=True, tooltip="Keypoints of the source person."),
                PoseKeypoint.Input("target_pose", optional=True, tooltip="Keypoints of the wanted pose (several frames: several targets)."),
                io.Image.Input("source_pose_image", optional=True, tooltip="Instead of source_pose: a rendered skeleton image."),
                io.Image.Input("target_pose_image", optional=True, tooltip="Instead of target_pose: a rendered skeleton image (e.g. from DWPose)."),
                _seed(),
                _steps(DEFAULTS["paper"].steps, f"Sampling steps (official: {DEFAULTS['paper'].steps} for the paper "
                       f"model, {DEFAULTS['noprior'].steps} for the no-prior checkpoint)."),
                _cfg(DEFAULTS["paper"].guidance_scale, "Guidance (official: 2.0 for both checkpoints)."),
                io.Combo.Input("scheduler", options=["auto"] + list(UNET_SCHEDULERS), default="auto",
                               tooltip="auto: the official sampler of the checkpoint (UniPC for the paper model, DDIM for the no-prior one)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per source."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The coarse target image (working size)."),
                io.Image.Output(display_name="canvas", tooltip="The whole [source | target] canvas the model drew."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, source, seed, steps, cfg, scheduler, batch_size, embedding=None, source_pose=None,
                target_pose=None, source_pose_image=None, target_pose_image=None) -> io.NodeOutput:
        with reported("PCDMs Inpaint") as said:
            result = run_inpaint(model, vae, source, embedding=embedding, source_pose=source_pose,
                                 target_pose=target_pose, source_pose_image=source_pose_image,
                                 target_pose_image=target_pose_image, seed=seed, steps=steps, cfg=cfg,
                                 scheduler=scheduler, batch_size=batch_size)
        return output(images_out(result.target), images_out(result.canvas), said=said)


def run_refine(model, vae, source: SourceFeatures, coarse, *, seed, steps, cfg, cfg_rescale, scheduler, strength=1.0):
    """``coarse``: uint8 [N, 3, H, W] images to refine."""
    model = _stage_model(model, "refine")
    tokens = source_tokens(source, coarse.shape[0])
    rescale = None if cfg_rescale < 0 else cfg_rescale
    check_stage_settings("refine", steps=steps, guidance_scale=cfg, guidance_rescale=rescale, scheduler=scheduler,
                         strength=strength, seed=seed)
    n = coarse.shape[0]
    w, h = source.size
    vae_model, vae_patcher, vae_memory = vae_for_stage(vae, (n, 3, h, w))
    memory = working_memory(2 * n, h // 8, w // 8, model.dtype) + vae_memory
    mm.load_models_gpu([model.patcher, vae_patcher], memory_required=memory, force_full_load=True)
    return sample_refine(
        model.patcher.model.inner, vae_model, coarse, tokens, size=source.size, steps=steps, guidance_scale=cfg,
        guidance_rescale=rescale, scheduler=scheduler, generator=seed,
        strength=strength, callback=step_callback(vae=vae),
    ).images


class PCDMsRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsRefine",
            display_name="PCDMs Refine",
            category=CATEGORY,
            description=(
                "Stage 3: restores texture and detail of a coarse image, guided by the source person. Takes any "
                "IMAGE batch, so other nodes (upscale, colour match, face fixes) can sit before it."
            ),
            inputs=[
                PcdmsModel.Input("model", tooltip="A stage-3 checkpoint (s3_*.pt)."),
                _vae_input(),
                PcdmsSource.Input("source", tooltip="From PCDMs Encode Source (the same source as stage 2)."),
                io.Image.Input("image", tooltip="The coarse image(s) to refine, e.g. PCDMs Inpaint's output."),
                _seed(),
                _steps(DEFAULTS["refine"].steps, f"Sampling steps (official: {DEFAULTS['refine'].steps})."),
                _cfg(DEFAULTS["refine"].guidance_scale, "Guidance; 1.0 (none) as the paper's runs most likely used."),
                io.Float.Input("cfg_rescale", default=-1.0, min=-1.0, max=4.0, step=0.05, round=0.01,
                               tooltip="Guidance rescale; -1 makes it equal to cfg, as the official script does."),
                io.Combo.Input("scheduler", options=list(UNET_SCHEDULERS), default=DEFAULTS["refine"].scheduler,
                               tooltip="unipc is the official sampler."),
                io.Float.Input("strength", default=1.0, min=0.01, max=1.0, step=0.01, round=0.01,
                               tooltip="1 (official): start from pure noise. Below 1: start from the coarse image, "
                                       "noised that far up the schedule, and run only that share of the steps "
                                       "(img2img; keeps more of the coarse image)."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, model, vae, source, image, seed, steps, cfg, cfg_rescale, scheduler,
                strength=1.0) -> io.NodeOutput:
        with reported("PCDMs Refine") as said:
            refined = run_refine(model, vae, source, images_in(image), seed=seed, steps=steps, cfg=cfg,
                                 cfg_rescale=cfg_rescale, scheduler=scheduler, strength=strength)
        notes = ()
        if strength < 1.0:  # the progress bar counts the steps that run
            notes = (f"strength {strength:g}: img2img from the image, the last {steps_run(steps, strength)} of "
                     f"{steps} steps run",)
        return output(images_out(refined), said=said, notes=notes)


class PCDMsAllStages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsAllStages",
            display_name="PCDMs All Stages",
            category=CATEGORY,
            description=(
                "Convenience: encode, prior, inpaint and refine in one node with the official settings. The separate "
                "nodes do the same and let you change each stage or put other nodes between them."
            ),
            inputs=[
                PcdmsModel.Input("inpaint_model", tooltip="Stage-2 checkpoint (paper or no-prior)."),
                _vae_input(),
                io.MultiType.Input("dino", types=[PcdmsDino, io.ClipVision],
                                   tooltip="DINOv2-giant: from PCDMs DINOv2 Loader, or core Load CLIP Vision."),
                io.Image.Input("image", tooltip="The source person."),
                PoseKeypoint.Input("source_pose", tooltip="Keypoints of the source person."),
                PoseKeypoint.Input("target_pose", tooltip="Keypoints of the wanted pose."),
                PcdmsModel.Input("prior_model", optional=True, tooltip="Stage-1 checkpoint (needed by the paper stage 2)."),
                io.MultiType.Input("clip", types=[PcdmsClip, io.ClipVision], optional=True,
                                   tooltip="CLIP ViT-H/14 (needed with the prior): PCDMs CLIP Vision Loader or core "
                                           "Load CLIP Vision."),
                PcdmsModel.Input("refine_model", optional=True, tooltip="Stage-3 checkpoint; without it the coarse image is returned."),
                _seed(),
                io.Int.Input("width", default=OFFICIAL_SIZE[0], min=8, max=2048, step=8, tooltip="Working width per half (official: 512)."),
                io.Int.Input("height", default=OFFICIAL_SIZE[1], min=8, max=2048, step=8, tooltip="Working height (official: 512)."),
                io.Int.Input("inpaint_steps", default=DEFAULTS["paper"].steps, min=1, max=1000,
                             tooltip=f"Official: {DEFAULTS['paper'].steps} (paper), {DEFAULTS['noprior'].steps} (no prior)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per source."),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Image.Output(display_name="coarse")],
        )

    @classmethod
    def execute(cls, inpaint_model, vae, dino, image, source_pose, target_pose, seed, width, height, inpaint_steps,
                batch_size, prior_model=None, clip=None, refine_model=None) -> io.NodeOutput:
        with reported("PCDMs All Stages") as said:
            final, coarse = run_all_stages(inpaint_model, vae, dino, image, source_pose, target_pose, seed=seed,
                                           width=width, height=height, inpaint_steps=inpaint_steps,
                                           batch_size=batch_size, prior_model=prior_model, clip=clip,
                                           refine_model=refine_model)
        return output(images_out(final), images_out(coarse), said=said)


def run_all_stages(inpaint_model, vae, dino, image, source_pose, target_pose, *, seed, width, height, inpaint_steps,
                   batch_size, prior_model=None, clip=None, refine_model=None):
    """The stages with the official settings; everything that can be checked is checked before any loading."""
    inpaint_model = _stage_model(inpaint_model, "inpaint")
    variant = inpaint_model.info.variant
    if variant == "noprior" and (prior_model is not None or clip is not None):
        warn_unused_prior(inpaint_model.name)
        prior_model = clip = None
    if variant == "paper" and (prior_model is None or clip is None):
        raise InputError(
            f"{inpaint_model.name} is the paper stage-2 checkpoint, which needs the prior's embedding: connect a "
            "stage-1 checkpoint to prior_model and a CLIP loader to clip (or use the no-prior checkpoint, "
            "PCDMs_ckpt.pt, which needs neither)"
        )
    if prior_model is not None:
        _stage_model(prior_model, "prior")
    if refine_model is not None:
        _stage_model(refine_model, "refine")
    prior, inpaint, refine = DEFAULTS["prior"], DEFAULTS[variant], DEFAULTS["refine"]
    check_stage_settings(variant, steps=inpaint_steps, num_images=batch_size, seed=seed)
    for pose in (source_pose, target_pose):  # a pose with nobody in it is refused before any loading
        poses_from_keypoints(pose)
    source = run_encode(image, dino, clip, width=width, height=height)
    embedding = None
    if prior_model is not None:
        embedding = run_prior(prior_model, source, source_pose, target_pose, seed=seed, steps=prior.steps,
                              cfg=prior.guidance_scale, scheduler=prior.scheduler)
    result = run_inpaint(inpaint_model, vae, source, embedding=embedding, source_pose=source_pose,
                         target_pose=target_pose, seed=seed, steps=inpaint_steps, cfg=inpaint.guidance_scale,
                         scheduler=inpaint.scheduler, batch_size=batch_size)
    coarse = result.target
    final = coarse
    if refine_model is not None:
        final = run_refine(refine_model, vae, source, to_uint8(coarse), seed=seed, steps=refine.steps,
                           cfg=refine.guidance_scale, cfg_rescale=-1.0, scheduler=refine.scheduler)
    return final, coarse


NODES = [PCDMsEncodeSource, PCDMsPrior, PCDMsInpaint, PCDMsRefine, PCDMsAllStages]
