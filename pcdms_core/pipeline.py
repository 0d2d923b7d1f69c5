"""The three stages chained: source image, source pose, target pose -> the person in the target pose.

    source ──CLIP──> prior(source embedding, source pose, target pose) ──> target embedding
    source ──DINOv2 (once)──┬──> inpaint(source, [source pose | target pose] skeletons, target embedding) ──> coarse
                            └──> refine(coarse) ──> image

Each stage is also a function of its own (``prior.sample_prior``, ``inpaint.sample_inpaint``,
``refine.sample_refine``); this module only wires them, computing the source's DINOv2 tokens once for
stages 2 and 3. With the demo checkpoint (no prior) the prior and CLIP are skipped, and the target pose may
be an image (for example a DWPose rendering).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from . import images as im
from .checkpoints import load_checkpoint
from .encoders import ImageEncoder, load_image_encoder
from .errors import InputError
from .inpaint import InpaintModel, sample_inpaint
from .pose import Pose, pose_vector, render_pose
from .prior import PriorTransformer, sample_prior
from .refine import RefineModel, sample_refine
from .sampling import SeedLike, StepInfo
from .vae import load_vae

PoseInput = Union[Pose, torch.Tensor]
StageCallback = Callable[[str, StepInfo], None]


@dataclass
class StageSettings:
    """Sampler settings of one stage; ``None`` means the official default for that stage."""

    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    scheduler: Optional[str] = None
    seed: SeedLike = None


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
    size: tuple[int, int] = (512, 512),
    prior_size: Optional[tuple[int, int]] = None,
) -> SourceFeatures:
    """Encode the source once: DINOv2 on the image stretched to the working ``size`` (as stages 2 and 3 read
    it), CLIP on the image stretched to ``prior_size`` (default: the working size; the official stage-1
    stretch is 512 x 512, the official working size too)."""
    pixels = im.as_uint8_batch(images)
    size = im.check_size(size, 8, "working size")
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
    ) -> "PCDMsPipeline":
        """Models from local files (see ``checkpoints.load_checkpoint``; ``configs`` may map "prior" /
        "inpaint" / "refine" to a config for tiny or custom-size models).

        ``lazy=True`` keeps only the paths: each stage loads its models just before it runs and frees them
        after, so peak memory is the largest stage's, not the sum of all models (about 18 GB in fp32 at the
        official sizes).
        """
        configs = configs or {}
        kw = dict(dtype=dtype, device=device)
        loaders = {
            "inpaint": lambda: load_checkpoint(inpaint, expect="inpaint", config=configs.get("inpaint"), **kw),
            "vae": lambda: load_vae(vae, **kw),
            "dino": lambda: load_image_encoder(dino, "dinov2", **kw),
            "prior": (lambda: load_checkpoint(prior, expect="prior", config=configs.get("prior"), **kw)) if prior else None,
            "clip": (lambda: load_image_encoder(clip, "clip", **kw)) if clip else None,
            "refine": (lambda: load_checkpoint(refine, expect="refine", config=configs.get("refine"), **kw)) if refine else None,
        }
        if not lazy:
            return cls(**{k: (f() if f else None) for k, f in loaders.items()})
        from .checkpoints import inspect_checkpoint

        info = inspect_checkpoint(inpaint, config=configs.get("inpaint"))
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
        if self.uses_prior and (self.prior is None or self.clip is None):
            raise InputError(
                "the paper stage-2 checkpoint needs the stage-1 prior and the CLIP ViT-H/14 encoder; load both "
                "(or use the demo stage-2 checkpoint, which needs neither)"
            )

    @torch.no_grad()
    def __call__(
        self,
        source,
        source_pose: PoseInput,
        target_pose: PoseInput,
        *,
        size: tuple[int, int] = (512, 512),
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
        prior_settings = prior_settings or StageSettings()
        inpaint_settings = inpaint_settings or StageSettings()
        refine_settings = refine_settings or StageSettings()
        if self.uses_prior and (not isinstance(source_pose, Pose) or not isinstance(target_pose, Pose)):
            raise InputError("the prior needs keypoint poses (Pose), not pose images")
        src = im.as_uint8_batch(source)
        size = im.check_size(size, 8, "working size")
        # (each ``del`` below drops the last reference to a lazily loaded model, so its memory goes before the next
        # stage loads)
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

        def stage_cb(name: str):
            return (lambda info: callback(name, info)) if callback is not None else None

        def seed_of(s: StageSettings) -> SeedLike:
            return seed if s.seed is None else s.seed

        embedding = None
        if self.uses_prior:
            prior = self._load("prior")
            embedding = sample_prior(
                prior, clip_embedding, pose_vector(source_pose), pose_vector(target_pose),
                steps=prior_settings.steps or 20,
                guidance_scale=1.0 if prior_settings.guidance_scale is None else prior_settings.guidance_scale,
                scheduler=prior_settings.scheduler or "unclip", generator=seed_of(prior_settings),
                callback=stage_cb("prior"),
            )
            del prior
            self._collect()

        def skeleton(p: PoseInput) -> torch.Tensor:
            return render_pose(p, tuple(size)) if isinstance(p, Pose) else p

        inpaint, vae = self._load("inpaint", "vae")
        coarse = sample_inpaint(
            inpaint, vae, src, skeleton(source_pose), skeleton(target_pose), tokens, embedding,
            size=tuple(size), steps=inpaint_settings.steps, guidance_scale=inpaint_settings.guidance_scale,
            scheduler=inpaint_settings.scheduler, generator=seed_of(inpaint_settings),
            num_images=num_images, callback=stage_cb("inpaint"),
        ).target
        del inpaint, vae
        self._collect()
        images = coarse
        if use_refine and self.refine is not None:
            refine, vae = self._load("refine", "vae")
            # The official chain hands stage 3 an 8-bit image; so do we.
            images = sample_refine(
                refine, vae, im.to_uint8(coarse), tokens.repeat_interleave(num_images, dim=0),
                size=tuple(size), steps=refine_settings.steps, guidance_scale=refine_settings.guidance_scale,
                scheduler=refine_settings.scheduler, generator=seed_of(refine_settings),
                callback=stage_cb("refine"),
            ).images
        return PipelineResult(images=images, coarse=coarse, prior_embedding=embedding, source_tokens=tokens)
