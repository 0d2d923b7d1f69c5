"""The three stages chained: source image, source pose, target pose -> the person in the target pose.

    source ──CLIP──> prior(source embedding, source pose, target pose) ──> target embedding
    source ──DINOv2 (once)──┬──> inpaint(source, [source pose | target pose] skeletons, target embedding) ──> coarse
                            └──> refine(coarse) ──> image

Each stage is also a function of its own (``stages.prior.sample_prior``, ``stages.inpaint.sample_inpaint``,
``stages.refine.sample_refine``); this module only wires them, computing the source's DINOv2 tokens once for
stages 2 and 3. With the no-prior checkpoint the prior and CLIP are skipped, and the target pose may
be an image (for example a DWPose rendering).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from . import images as im
from .loading.checkpoints import load_checkpoint
from .networks.encoders import ImageEncoder
from .loading.encoders import load_image_encoder
from .errors import InputError, pcdms_warn
from .networks.inpaint import InpaintModel
from .stages.inpaint import decode_canvas, encode_canvas, sample_inpaint
from .pose.keypoints import Pose, pose_vector, render_pose
from .networks.prior import PriorTransformer
from .stages.prior import sample_prior
from .networks.refine import RefineModel
from .stages.refine import encode_coarse, sample_refine
from .seeding import SeedLike, as_generator
from .stages.defaults import OFFICIAL_SIZE
from .stages.loop import StepInfo, check_finite
from .networks import vae as vae_ops
from .loading.vae import load_vae

PoseInput = Union[Pose, torch.Tensor]
StageCallback = Callable[[str, StepInfo], None]


@dataclass
class StageSettings:
    """Sampler settings of one stage; ``None`` means the official default for that stage."""

    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    scheduler: Optional[str] = None
    seed: SeedLike = None
    strength: Optional[float] = None  # stage 3 only: below 1, start from the coarse image's noised latents


@dataclass
class SourceFeatures:
    """The source images encoded once for all stages."""

    pixels: torch.Tensor  # uint8 [B, 3, H, W], as given
    size: tuple[int, int]  # (W, H) per half: the stages' working size
    tokens: Optional[torch.Tensor] = None  # DINOv2 last_hidden_state [B, 257, D] (stages 2 and 3)
    clip_embedding: Optional[torch.Tensor] = None  # CLIP image_embeds [B, 1024] (the prior)

    @property
    def batch(self) -> int:
        return int(self.pixels.shape[0])


@torch.no_grad()
def encode_source(
    images,
    dino: Optional[ImageEncoder],
    clip: Optional[ImageEncoder] = None,
    *,
    size: tuple[int, int] = OFFICIAL_SIZE,
    prior_size: Optional[tuple[int, int]] = None,
) -> SourceFeatures:
    """Encode the source once: DINOv2 on the image stretched to the working ``size`` (as stages 2 and 3 read
    it), CLIP on the image stretched to ``prior_size`` (default: the working size; the official stage-1
    stretch is 512 x 512, the official working size too)."""
    pixels = im.as_uint8_batch(images)
    size = im.check_size(size, 8, "working size")
    im.warn(im.size_warnings(im.image_size(pixels), size, "source image"))
    return SourceFeatures(
        pixels=pixels,
        size=size,
        tokens=dino.encode(pixels, size) if dino is not None else None,
        clip_embedding=clip.encode(pixels, tuple(prior_size or size)) if clip is not None else None,
    )


@dataclass
class PipelineResult:
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]: refined (or coarse when there is no stage 3)
    coarse: torch.Tensor  # stage 2's target half, [N, 3, H, W]
    prior_embedding: Optional[torch.Tensor] = None  # [B, 1024] (paper path)
    source_tokens: Optional[torch.Tensor] = field(default=None, repr=False)


class Lazy:
    """A model that is loaded when a stage needs it and released when the stage is done (see ``from_files``)."""

    def __init__(self, load: Callable[[], torch.nn.Module], description: str):
        self._load = load
        self.description = description

    def load(self) -> torch.nn.Module:
        return self._load()


@dataclass
class PCDMsPipeline:
    inpaint: Union[InpaintModel, Lazy]
    vae: Union[torch.nn.Module, Lazy]
    dino: Union[ImageEncoder, Lazy]
    prior: Optional[Union[PriorTransformer, Lazy]] = None
    clip: Optional[Union[ImageEncoder, Lazy]] = None
    refine: Optional[Union[RefineModel, Lazy]] = None
    uses_prior: Optional[bool] = None  # told from the stage-2 file when it is lazy

    def __post_init__(self) -> None:
        if self.uses_prior is None:
            self.uses_prior = bool(getattr(self.inpaint, "uses_prior", False))

    @classmethod
    def from_files(
        cls,
        *,
        inpaint,
        vae,
        dino,
        prior=None,
        clip=None,
        refine=None,
        configs: Optional[dict] = None,
        dtype: torch.dtype = torch.float32,
        device=None,
        lazy: bool = False,
        prepare: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None,
    ) -> "PCDMsPipeline":
        """Models from local files (see ``loading.checkpoints.load_checkpoint``; ``configs`` may map "prior" /
        "inpaint" / "refine" to a config for tiny or custom-size models).

        ``lazy=True`` keeps only the paths: each stage loads its models just before it runs and frees them
        after, so peak memory is the largest stage's, not the sum of all models (about 18 GB in fp32 at the
        official sizes). ``prepare`` is applied to each model once it is loaded (the command line passes
        ``cpu.speed_up`` for CPU runs). A prior or CLIP given with the no-prior stage 2 is not loaded, with a
        ``PCDMsWarning``.
        """
        configs = configs or {}
        from .loading.checkpoints import inspect_checkpoint

        info = inspect_checkpoint(inpaint, config=configs.get("inpaint"))  # reads no weights
        if info.variant == "noprior" and (prior or clip):
            warn_unused_prior(info.path.name)
            prior = clip = None
        kw = dict(dtype=dtype, device=device)
        loaders = {
            "inpaint": lambda: load_checkpoint(inpaint, expect="inpaint", config=configs.get("inpaint"), **kw),
            "vae": lambda: load_vae(vae, **kw),
            "dino": lambda: load_image_encoder(dino, "dinov2", **kw),
            "prior": (lambda: load_checkpoint(prior, expect="prior", config=configs.get("prior"), **kw)) if prior else None,
            "clip": (lambda: load_image_encoder(clip, "clip", **kw)) if clip else None,
            "refine": (lambda: load_checkpoint(refine, expect="refine", config=configs.get("refine"), **kw)) if refine else None,
        }
        if prepare is not None:
            loaders = {k: (lambda f=f: prepare(f())) if f else None for k, f in loaders.items()}
        if not lazy:
            return cls(**{k: (f() if f else None) for k, f in loaders.items()})
        models = {k: (Lazy(f, k) if f else None) for k, f in loaders.items()}
        return cls(**models, uses_prior=info.variant == "paper")

    def _load(self, *names: str):
        """The named models, loaded now if lazy. The caller ``del``s them after the stage, then ``_collect``s."""
        loaded = [m.load() if isinstance(m, Lazy) else m for m in (getattr(self, n) for n in names)]
        return tuple(loaded) if len(loaded) > 1 else loaded[0]

    def _collect(self) -> None:
        """Free the memory of models the caller has just dropped (only lazy pipelines drop any)."""
        if any(isinstance(getattr(self, n), Lazy) for n in ("inpaint", "vae", "dino", "prior", "clip", "refine")):
            gc.collect()

    def _check(self) -> None:
        if not self.uses_prior and (self.prior is not None or self.clip is not None):
            warn_unused_prior("the stage-2 model")
        if self.uses_prior and (self.prior is None or self.clip is None):
            raise InputError(
                "the paper stage-2 checkpoint needs the stage-1 prior and the CLIP ViT-H/14 encoder; load both "
                "(or use the no-prior stage-2 checkpoint, PCDMs_ckpt.pt, which needs neither)"
            )

    # --- the stages, each loading its models when lazy and freeing them before it returns ----------------------

    @torch.no_grad()
    def run_encoders(self, src: torch.Tensor, size: tuple[int, int], prior_size=None):
        """DINOv2 tokens of the source (stages 2 and 3) and, on the paper path, its CLIP embedding (the prior)."""
        dino = self._load("dino")
        tokens = dino.encode(src, size)
        del dino
        self._collect()
        clip_embedding = None
        if self.uses_prior:
            clip = self._load("clip")
            clip_embedding = clip.encode(src, tuple(prior_size or size))
            del clip
            self._collect()
        return tokens, clip_embedding

    @torch.no_grad()
    def run_prior(self, clip_embedding, source_pose, target_pose, settings: StageSettings,
                  seed: SeedLike = 42, callback=None) -> torch.Tensor:
        """The target embedding; poses are ``Pose`` objects (or lists of them) or ``[B, 36]`` pose vectors."""
        prior = self._load("prior")
        embedding = sample_prior(
            prior, clip_embedding, _as_vector(source_pose), _as_vector(target_pose),
            steps=settings.steps, guidance_scale=settings.guidance_scale, scheduler=settings.scheduler,
            generator=_seed_of(settings, seed), callback=callback,
        )
        del prior
        self._collect()
        return embedding

    @torch.no_grad()
    def run_inpaint(self, src, source_skeleton, target_skeleton, tokens, embedding, size: tuple[int, int],
                    settings: StageSettings, seed: SeedLike = 42, num_images: int = 1, callback=None,
                    vae=None) -> torch.Tensor:
        """Stage 2's coarse target images. The VAE (``vae``, or this pipeline's) encodes before the UNet is
        loaded and decodes after it is freed, so its activations never sit beside the UNet; one generator
        draws, in the official order, the VAE posterior sample and then the noise."""
        gen = as_generator(_seed_of(settings, seed))
        vae = self._load("vae") if vae is None else vae
        masked_latents = encode_canvas(vae, src, tuple(size), gen)
        inpaint = self._load("inpaint")
        latents = sample_inpaint(
            inpaint, vae, src, source_skeleton, target_skeleton, tokens, embedding,
            size=tuple(size), steps=settings.steps, guidance_scale=settings.guidance_scale,
            scheduler=settings.scheduler, generator=gen, masked_latents=masked_latents,
            num_images=num_images, callback=callback, decode=False,
        ).latents
        del inpaint
        self._collect()
        return decode_canvas(vae, latents).target

    @torch.no_grad()
    def run_refine(self, coarse, tokens, size: tuple[int, int], settings: StageSettings, seed: SeedLike = 42,
                   num_images: int = 1, callback=None, vae=None) -> torch.Tensor:
        """Stage 3 on stage 2's images (``num_images`` per source, in order), handed over as 8-bit pixels as
        the official chain does; the VAE works outside the UNet's lifetime as in ``run_inpaint``."""
        gen = as_generator(_seed_of(settings, seed))
        vae = self._load("vae") if vae is None else vae
        coarse_u8 = im.to_uint8(coarse)
        coarse_latents = encode_coarse(vae, coarse_u8, tuple(size), gen)
        refine = self._load("refine")
        latents = sample_refine(
            refine, vae, coarse_u8, tokens.repeat_interleave(num_images, dim=0),
            size=tuple(size), steps=settings.steps, guidance_scale=settings.guidance_scale,
            scheduler=settings.scheduler, generator=gen, coarse_latents=coarse_latents, callback=callback,
            strength=1.0 if settings.strength is None else settings.strength,
            decode=False,
        ).latents
        del refine
        self._collect()
        return check_finite(vae_ops.decode(vae, latents), "refine", "the decoded image", vae=True)

    @torch.no_grad()
    def __call__(
        self,
        source,
        source_pose: PoseInput,
        target_pose: PoseInput,
        *,
        size: tuple[int, int] = OFFICIAL_SIZE,
        prior_size: Optional[tuple[int, int]] = None,
        seed: SeedLike = 42,
        prior_settings: Optional[StageSettings] = None,
        inpaint_settings: Optional[StageSettings] = None,
        refine_settings: Optional[StageSettings] = None,
        num_images: int = 1,
        use_refine: bool = True,
        callback: Optional[StageCallback] = None,
    ) -> PipelineResult:
        """Run the stages on one source image (a batch of sources works too, with poses per source).

        Poses are ``Pose`` objects (keypoints; needed by the prior) or skeleton images. Keypoint poses are
        rendered at the working ``size`` (W, H) per half; CLIP reads the source at ``prior_size`` (default:
        ``size``). Each stage seeds its own generator with ``seed``
        (as the official scripts seed each stage with 42) unless its settings give another seed.
        """
        self._check()
        if self.uses_prior and (not isinstance(source_pose, Pose) or not isinstance(target_pose, Pose)):
            raise InputError("the prior needs keypoint poses (Pose), not pose images")
        src = im.as_uint8_batch(source)
        size = tuple(im.check_size(size, 8, "working size"))
        im.warn(im.size_warnings(im.image_size(src), size, "source image"))

        def stage_cb(name: str):
            return (lambda info: callback(name, info)) if callback is not None else None

        def skeleton(p: PoseInput) -> torch.Tensor:
            return render_pose(p, size) if isinstance(p, Pose) else p

        tokens, clip_embedding = self.run_encoders(src, size, prior_size)
        embedding = None
        if self.uses_prior:
            embedding = self.run_prior(clip_embedding, source_pose, target_pose, prior_settings or StageSettings(),
                                       seed, stage_cb("prior"))
        vae = self._load("vae")  # one VAE for stages 2 and 3
        coarse = self.run_inpaint(src, skeleton(source_pose), skeleton(target_pose), tokens, embedding, size,
                                  inpaint_settings or StageSettings(), seed, num_images, stage_cb("inpaint"), vae=vae)
        images = coarse
        if use_refine and self.refine is not None:
            images = self.run_refine(coarse, tokens, size, refine_settings or StageSettings(), seed, num_images,
                                     stage_cb("refine"), vae=vae)
        del vae
        self._collect()
        return PipelineResult(images=images, coarse=coarse, prior_embedding=embedding, source_tokens=tokens)


def warn_unused_prior(name: str) -> None:
    """The no-prior stage 2 given a prior or CLIP: they are not used (the official no-prior pipeline has no
    stage 1), which is said once rather than refused, so one command line or script serves both checkpoints."""
    pcdms_warn(
        f"{name} is the no-prior stage-2 checkpoint (like the released PCDMs_ckpt.pt): it does not use the stage-1 "
        "prior or CLIP, so those given are not loaded or run. Leave them out, or give the paper stage-2 checkpoint "
        "(s2_512.pt) to use them.",
        stacklevel=3,
    )


def _as_vector(pose) -> torch.Tensor:
    return pose if isinstance(pose, torch.Tensor) else pose_vector(pose)


def _seed_of(settings: StageSettings, seed: SeedLike) -> SeedLike:
    return seed if settings.seed is None else settings.seed
