"""Training for the three stages (and the small VAE the demo models need), after the official recipes.

One loop for every stage and size: ``accelerate`` runs it on a CPU or on several GPUs unchanged. Each run
writes to its output folder: ``checkpoints/step_N`` (model, optimiser and step; a run resumes from the
newest one), ``loss.jsonl``, and the trained model in our checkpoint layout (``<stage>.safetensors``).

Recipes (the official training scripts'), per stage:

| | prior | inpainting | refining |
|---|---|---|---|
| objective | MSE on the normalised clean embedding (x0) | MSE on the noise, whole [source / target] latent | MSE on the noise |
| schedule | DDPM, squared cosine, 1000 steps | DDPM, SD 2.1 betas | DDPM, SD 2.1 betas |
| condition dropout (p 0.1 each) | source image pixels, source pose, target pose | DINOv2 input pixels, CLIP target pixels | coarse-image pixels |
| noise offset | 0.1 | 0.1 | 0.1 |
| optimiser | AdamW, wd 0.01, clip 10 | AdamW (0.9, 0.999), wd 0.01, eps 1e-8, clip 1 | as inpainting |
| official lr (constant) | 1e-5 | 1e-4 | 1e-5 |

Dropping "pixels" means zeroing the encoder's preprocessed input (CLIP-normalised space), as the official
datasets do. Stage 3 learns from stage-2 outputs on training pairs (made with the real target embedding,
like the official batch test on train_data.json): ``make_coarse`` writes them once.

Data: the synthetic set (``synthetic.SyntheticPairs``) or a DeepFashion-style folder (``DeepFashionPairs``:
the official pairs list, images and ``normalized_pose_txt`` keypoint files). By default every step draws fresh
pairs; ``pool`` (inpainting, the VAE) draws them from a fixed pool instead and keeps each pair's frozen encodings
(at the demo size half the cost of a stage-2 step) or, for the VAE, its rendering (about 5% of a VAE step at
64 x 64).

Warm starts: ``init`` continues from a checkpoint of the same stage; for refining it may also be a stage-2
checkpoint (``refine_from_inpaint``), and for inpainting one of the other variant (``inpaint_as_variant``), as
the official stages 2 and 3 both start from SD 2.1's UNet.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.nn import functional as F

from .. import bundled
from .. import diffusers_glue as glue
from . import demo_models as demo
from .. import images as im
from ..networks import vae as vae_ops
from ..loading.vae import load_vae, save_vae
from ..loading.checkpoints import inspect_checkpoint, load_checkpoint, save_checkpoint
from ..networks.encoders import ImageEncoder, preprocess
from ..loading.encoders import load_image_encoder, save_image_encoder
from ..errors import InputError, PCDMsError
from ..networks.inpaint import InpaintModel
from ..stages.inpaint import keep_mask
from ..pose.keypoints import load_pose, pose_vector, render_pose
from ..networks.prior import from_clip_space
from ..pipeline import PCDMsPipeline, StageSettings
from ..networks.refine import RefineModel
from .synthetic import SyntheticPairs

# --- data --------------------------------------------------------------------------------------------------------

@dataclass
class Batch:
    source: torch.Tensor  # uint8 [B, 3, H, W] at the working size
    target: torch.Tensor
    source_skeleton: Optional[torch.Tensor]  # uint8 [B, 3, H, W] (None when the stage does not read them)
    target_skeleton: Optional[torch.Tensor]
    source_pose: torch.Tensor  # [B, 36]
    target_pose: torch.Tensor
    index: list[int] = field(default_factory=list)
    target_mask: Optional[torch.Tensor] = None  # bool [B, H, W] when the data has it


class SyntheticData:
    def __init__(self, seed: int, size: tuple[int, int], skeletons: bool = True):
        self.pairs = SyntheticPairs(seed=seed, size=size)
        self.size = size
        self.skeletons = skeletons

    def batch(self, indices: list[int]) -> Batch:
        items = [self.pairs[i] for i in indices]
        stack = lambda xs: torch.stack(list(xs))  # noqa: E731
        sk = self.skeletons
        return Batch(
            source=stack(p.source for p in items), target=stack(p.target for p in items),
            source_skeleton=stack(render_pose(p.source_pose, self.size) for p in items) if sk else None,
            target_skeleton=stack(render_pose(p.target_pose, self.size) for p in items) if sk else None,
            source_pose=pose_vector([p.source_pose for p in items]), target_pose=pose_vector([p.target_pose for p in items]),
            index=list(indices), target_mask=stack(p.target_mask for p in items),
        )


class DeepFashionPairs:
    """A DeepFashion-style folder: ``pairs`` is the official train/test json (``source_image`` / ``target_image``
    names ending .jpg), images are read as .png from ``images``, keypoints from ``poses`` (18-line txt files),
    skeleton images from ``pose_images`` (``<name>_pose.jpg``) when given, else rendered from the keypoints."""

    def __init__(self, pairs: Path, images: Path, poses: Path, size: tuple[int, int], pose_images: Optional[Path] = None):
        self.items = json.loads(Path(pairs).read_text())
        if not self.items:
            raise InputError(f"{pairs} lists no pairs")
        self.images, self.poses, self.pose_images, self.size = Path(images), Path(poses), pose_images, size

    def _load(self, name: str):
        from PIL import Image

        img = im.resize_u8(im.as_uint8_batch(Image.open(self.images / name.replace(".jpg", ".png"))), self.size)[0]
        pose = load_pose(self.poses / name.replace(".jpg", ".txt"), min_joints=1)
        if self.pose_images is not None and (Path(self.pose_images) / name.replace(".jpg", "_pose.jpg")).exists():
            sk = im.resize_u8(im.as_uint8_batch(Image.open(Path(self.pose_images) / name.replace(".jpg", "_pose.jpg"))), self.size)[0]
        else:
            sk = render_pose(pose, self.size)
        return img, pose, sk

    def batch(self, indices: list[int]) -> Batch:
        rows = []
        for i in indices:
            item = self.items[i % len(self.items)]
            rows.append((self._load(item["source_image"]), self._load(item["target_image"])))
        return Batch(
            source=torch.stack([s[0] for s, _ in rows]), target=torch.stack([t[0] for _, t in rows]),
            source_skeleton=torch.stack([s[2] for s, _ in rows]), target_skeleton=torch.stack([t[2] for _, t in rows]),
            source_pose=pose_vector([s[1] for s, _ in rows]), target_pose=pose_vector([t[1] for _, t in rows]),
            index=list(indices),
        )


# --- configuration -----------------------------------------------------------------------------------------------

OFFICIAL = {
    "prior": dict(lr=1e-5, weight_decay=0.01, grad_clip=10.0),
    "inpaint": dict(lr=1e-4, weight_decay=0.01, grad_clip=1.0),
    "refine": dict(lr=1e-5, weight_decay=0.01, grad_clip=1.0),
    "vae": dict(lr=1e-3, weight_decay=0.0, grad_clip=1.0),
}


@dataclass
class TrainConfig:
    stage: str  # "vae" | "prior" | "inpaint" | "refine"
    out: str
    steps: int = 1000
    batch_size: int = 16
    lr: Optional[float] = None  # default: the official one (see OFFICIAL)
    weight_decay: Optional[float] = None
    grad_clip: Optional[float] = None
    variant: str = "paper"  # inpainting: "paper" (takes the prior's embedding) or "noprior"
    size: tuple[int, int] = bundled.SIZE
    seed: int = 0
    data: str = "synthetic"  # or "deepfashion"
    pairs: Optional[str] = None  # DeepFashion: pairs json, images, keypoints, skeleton images
    images: Optional[str] = None
    poses: Optional[str] = None
    pose_images: Optional[str] = None
    vae: Optional[str] = None  # frozen parts (default: the demo files)
    clip: Optional[str] = None
    dino: Optional[str] = None
    init: Optional[str] = None  # start from this checkpoint instead of a random initialisation
    coarse: Optional[str] = None  # refining: the stage-2 outputs (see make_coarse)
    augment: bool = False  # refining: flip and reorder colours of (source, coarse, target) together (see _joint_augment)
    degrade: float = 0.0  # refining: the share of each batch from fresh pairs, coarse image made up (degrade_target)
    decoder_only: bool = False  # VAE: train only the decoder of --init's VAE, keeping its latent space
    pool: int = 0  # inpainting, VAE: > 0 draws pairs from the first `pool` pairs and keeps their frozen encodings
    # (InpaintStage) or renderings (VaeStage)
    drop_rate: float = 0.1
    noise_offset: float = 0.1
    save_every: int = 250
    keep_checkpoints: int = 2
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights with this decay and export it
    mixed_precision: str = "no"
    log_every: int = 10
    export_to: Optional[str] = None  # also write the trained model here (e.g. into pcdms_core/demo_models/) ...
    export_dtype: str = "fp16"  # ... in this dtype

    def __post_init__(self):
        if self.augment and self.stage != "refine":
            raise InputError("--augment is for refining only: the other stages see poses, which a flip or a "
                             "colour change would not follow")
        if self.degrade and self.stage != "refine":
            raise InputError("--degrade is for refining only: it stands in for stage-2 outputs")
        if not 0.0 <= self.degrade <= 1.0:
            raise InputError(f"--degrade is the share of each batch with a made-up coarse image: between 0 and 1, "
                             f"got {self.degrade}")
        if self.degrade and self.data != "synthetic":
            raise InputError("--degrade draws fresh synthetic pairs (it needs their body masks and poses): "
                             "use --data synthetic")
        if self.pool and self.stage not in ("inpaint", "vae"):
            raise InputError("--pool is for inpainting and the VAE only")
        if self.pool < 0:
            raise InputError(f"--pool is a number of pairs (0 for fresh pairs every step), got {self.pool}")
        if self.decoder_only and self.stage != "vae":
            raise InputError("--decoder-only is for the VAE only")
        if self.decoder_only and not self.init:
            raise InputError("--decoder-only fine-tunes the decoder of an existing VAE: pass it with --init")

    def hyper(self, name: str) -> float:
        value = getattr(self, name)
        return OFFICIAL[self.stage][name] if value is None else value


def _data(cfg: TrainConfig):
    if cfg.data == "synthetic":
        return SyntheticData(cfg.seed, tuple(cfg.size), skeletons=cfg.stage == "inpaint" or bool(cfg.degrade))
    if cfg.data == "deepfashion":
        if not (cfg.pairs and cfg.images and cfg.poses):
            raise InputError("DeepFashion training needs --pairs, --images and --poses")
        return DeepFashionPairs(Path(cfg.pairs), Path(cfg.images), Path(cfg.poses), tuple(cfg.size),
                                Path(cfg.pose_images) if cfg.pose_images else None)
    raise InputError(f"unknown data {cfg.data!r}: use synthetic or deepfashion")


def _frozen(path: Optional[str], kind: str, loader: Callable, device):
    model = loader(path or bundled.demo_file(kind))
    return model.to(device).eval().requires_grad_(False)


# --- the stages' losses ---------------------------------------------------------------------------------------------

def _kept_rows(x: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Condition dropout's draw: which samples of ``x`` keep their condition (probability 1 - ``rate``)."""
    return (torch.rand(x.shape[0], generator=gen) >= rate).to(x.device).view(-1, *([1] * (x.ndim - 1)))


def _drop(x: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Zero whole samples with probability ``rate`` (condition dropout)."""
    return x * _kept_rows(x, rate, gen).to(x.dtype)


def _drop_to(x: torch.Tensor, dropped: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """``_drop`` for encodings: the same draw, and a dropped sample becomes ``dropped`` (the encoding of zeros)."""
    return torch.where(_kept_rows(x, rate, gen), x, dropped.to(x))


def _noisy(scheduler, x0: torch.Tensor, gen: torch.Generator, offset: float):
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    if offset:  # one offset per sample (and channel), as the official B x C x 1 x 1 / B x 1 x 1
        shape = (x0.shape[0], 1) if x0.ndim == 2 else (*x0.shape[:2], *([1] * (x0.ndim - 2)))
        noise = noise + offset * torch.randn(shape, generator=gen).to(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(x0.device)
    return scheduler.add_noise(x0, noise, t), noise, t


_CHANNEL_ORDERS = torch.tensor(list(itertools.permutations(range(3))))


def _joint_augment(gen: torch.Generator, *images: torch.Tensor) -> list[torch.Tensor]:
    """The same random change for each sample of every ``[B, 3, H, W]`` image batch: a horizontal flip (p 0.5) and,
    with p 0.5, one of the five other orders of the RGB channels. Refining learns from a fixed set of stage-2
    outputs; changed this way a (source, coarse, target) triple is still a valid one (stage 3 takes no pose), so
    each pair has twelve variants and the model must take colours from the source instead of learning them by heart."""
    b = images[0].shape[0]
    flip = (torch.rand(b, generator=gen) < 0.5).view(-1, 1, 1, 1)
    reorder = torch.rand(b, generator=gen) < 0.5
    order = _CHANNEL_ORDERS[torch.where(reorder, torch.randint(1, 6, (b,), generator=gen), 0)]
    rows = torch.arange(b).view(-1, 1)
    return [torch.where(flip, x.flip(-1), x)[rows, order] for x in images]


def degrade_target(target: torch.Tensor, skeleton: torch.Tensor, mask: torch.Tensor,
                   gen: torch.Generator) -> torch.Tensor:
    """A made-up stage-2 output for each uint8 ``[B, 3, H, W]`` target: the kinds of error stage 2 makes, drawn
    at random per sample. Inside the body (``mask``, bool ``[B, H, W]``) the colours are scaled and shifted (p 0.7);
    the colours of the pose skeleton (``skeleton``, uint8) bleed in; the image is blurred (p 1/3), warped
    smoothly by up to a few pixels and noised, coarsely and finely. Refining learns from a fixed set of stage-2
    outputs and overfits them; these cost nothing to make, so every batch can hold pairs it has never seen."""
    b, _, h, w = target.shape
    u = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand((b, *shape), generator=gen)  # noqa: E731
    x = target.float() / 255
    body = F.avg_pool2d(mask.float().unsqueeze(1), 5, 1, 2)
    recoloured = (x * u(0.75, 1.25, 3, 1, 1) + u(-0.12, 0.12, 3, 1, 1)).clamp(0, 1)
    x = x + body * (torch.rand(b, 1, 1, 1, generator=gen) < 0.7).float() * (recoloured - x)
    bones = skeleton.float() / 255
    on_bones = F.avg_pool2d((bones.amax(1, keepdim=True) > 0).float(), 3, 1, 1)
    x = x + u(0.0, 0.45, 1, 1, 1) * on_bones * (bones - x)
    blurred = F.interpolate(F.avg_pool2d(x, 2), size=(h, w), mode="bilinear", align_corners=False)
    x = torch.where((torch.randint(0, 3, (b,), generator=gen) == 2).view(-1, 1, 1, 1), blurred, x)
    coarse_noise = F.interpolate(torch.randn(b, 3, h // 8, w // 8, generator=gen), size=(h, w), mode="bilinear",
                                 align_corners=False)
    x = x + u(0, 0.05, 1, 1, 1) * coarse_noise + u(0, 0.025, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    shift = F.interpolate(torch.randn(b, 2, 4, 4, generator=gen), size=(h, w), mode="bicubic", align_corners=False)
    shift = shift * u(0, 2.5, 1, 1, 1) * 2 / w  # in grid units: up to about 2.5 pixels per unit of noise
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], -1).expand(b, h, w, 2) + shift.permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class Stage:
    """A stage's trainable model, its frozen helpers and its loss."""

    model: torch.nn.Module
    name: str

    def loss(self, model, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def indices(self, step: int, batch_size: int, rank: int, world: int) -> list[int]:
        """The pairs of a step, each process its own: fresh ones, or with ``--pool N`` ones from the first N pairs
        (each process its own share of them, in a new order each pass through it)."""
        pool = self.cfg.pool
        if not pool:
            first = (step * world + rank) * batch_size
            return list(range(first, first + batch_size))
        if pool < world:
            raise InputError(f"--pool {pool} is smaller than the {world} training processes: each needs pairs")
        shard = range(rank, pool, world)
        out = []
        for position in range(step * batch_size, (step + 1) * batch_size):
            epoch, k = divmod(position, len(shard))
            if self._order[0] != (epoch, rank):
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_033 + epoch * 7919 + rank)
                self._order = ((epoch, rank), torch.randperm(len(shard), generator=g).tolist())
            out.append(shard[self._order[1][k]])
        return out

    _order: tuple = (None, [])  # --pool: (pass, process) and that pass's order of the process's share

    def _keep(self, data, indices: list[int], compute) -> dict:
        """--pool: what ``compute(batch)`` gives (a dict of per-pair tensors) for each pair of ``indices``, computed
        once per pair and kept; stacked in the order of ``indices``."""
        kept = self._kept
        new = [i for i in dict.fromkeys(indices) if i not in kept]
        if new:
            out = compute(data.batch(new))
            for row, i in enumerate(new):
                kept[i] = {k: v[row].clone() for k, v in out.items()}
        return {k: torch.stack([kept[i][k] for i in indices]) for k in kept[indices[0]]}

    def step_loss(self, model, data, indices: list[int], gen: torch.Generator) -> torch.Tensor:
        return self.loss(model, data.batch(indices), gen)

    def export(self, model, path: Path, dtype=None) -> Path:
        raise NotImplementedError


class _VaePass(torch.nn.Module):
    """A VAE's training pass (encode, draw from the posterior, decode) as one ``forward``, so that data-parallel
    training runs it through DDP's forward, which syncs the gradients (calling ``encode`` / ``decode`` on the
    wrapped model would not)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, gen: torch.Generator):
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen).to(x)
        return self.vae.decode(z).sample, dist.kl()


class VaeStage(Stage):
    name = "vae"

    def __init__(self, cfg: TrainConfig, device):
        self.cfg, self.device = cfg, device
        vae = load_vae(cfg.init) if cfg.init else demo.build_vae()
        # a loaded VAE comes frozen: train all of it, or (--decoder-only) the decoder alone
        vae.requires_grad_(not cfg.decoder_only)
        if cfg.decoder_only:
            # the encoder, and so the latent space the UNets were trained in, stays as it is
            vae.decoder.requires_grad_(True)
            vae.post_quant_conv.requires_grad_(True)
        self.model = _VaePass(vae)
        self._kept: dict[int, dict] = {}  # --pool: each kept pair's rendering (source, target)

    CROP = 64  # the VAE is convolutional: random 64 x 64 crops train it four times faster per image

    def loss(self, model, batch, gen):
        return self._loss_from(model, batch.source, batch.target, gen)

    def step_loss(self, model, data, indices, gen):
        if not self.cfg.pool:  # --pool: each pair's rendering is kept
            return super().step_loss(model, data, indices, gen)
        kept = self._keep(data, indices, lambda b: {"source": b.source, "target": b.target})
        return self._loss_from(model, kept["source"], kept["target"], gen)

    def _loss_from(self, model, source, target, gen):
        x = im.to_model_range(torch.cat([source, target])).to(self.device)
        c = self.CROP
        if x.shape[-1] > c and x.shape[-2] > c:
            ys = torch.randint(0, (x.shape[-2] - c) // 4 + 1, (x.shape[0],), generator=gen) * 4
            xs = torch.randint(0, (x.shape[-1] - c) // 4 + 1, (x.shape[0],), generator=gen) * 4
            x = torch.stack([img[:, y:y + c, x0:x0 + c] for img, y, x0 in zip(x, ys.tolist(), xs.tolist())])
        rec, kl = model(x, gen)
        kl = kl.mean() / x[0].numel()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl

    @torch.no_grad()
    def export(self, model, path, dtype=None):
        """Also sets ``scaling_factor`` so the latents have unit variance (SD uses 0.18215 for the same), unless
        only the decoder was trained: then the latents, and their scale, are the initial VAE's."""
        model = model.vae
        if self.cfg.decoder_only:
            return save_vae(model, path, dtype)
        data = SyntheticData(12345, bundled.SIZE)
        b = data.batch(list(range(64)))
        x = im.to_model_range(torch.cat([b.source, b.target])).to(next(model.parameters()).device)
        std = float(model.encode(x).latent_dist.mean.std())
        model.register_to_config(scaling_factor=round(1.0 / std, 5))
        return save_vae(model, path, dtype)


class PriorStage(Stage):
    name = "prior"

    def __init__(self, cfg: TrainConfig, device):
        from ..stages.loop import make_scheduler

        self.cfg, self.device = cfg, device
        self.clip = _frozen(cfg.clip, "clip", lambda p: load_image_encoder(p, "clip"), device)
        self.scheduler = _ddpm(make_scheduler("ddpm", "prior"))
        if cfg.init:
            self.model = load_checkpoint(cfg.init, expect="prior")
        else:
            stats = _embedding_stats(self.clip, cfg)
            self.model = demo.build_prior(*stats)
        self.model.requires_grad_(True)

    def loss(self, model, batch, gen):
        cfg = self.cfg
        with torch.no_grad():
            src_px = _drop(preprocess(batch.source, cfg.size), cfg.drop_rate, gen).to(self.device)
            src_emb = self.clip(src_px)
            tgt_emb = self.clip(preprocess(batch.target, cfg.size).to(self.device))
        x0 = from_clip_space(tgt_emb, _config(model))
        x_t, _, t = _noisy(self.scheduler, x0, gen, cfg.noise_offset)
        sp = _drop(batch.source_pose, cfg.drop_rate, gen).to(self.device)
        tp = _drop(batch.target_pose, cfg.drop_rate, gen).to(self.device)
        pred = model(x_t, t, src_emb, sp, tp)
        return F.mse_loss(pred.float(), x0.float())

    def export(self, model, path, dtype=None):
        return save_checkpoint(model, path, dtype=dtype)


class InpaintStage(Stage):
    name = "inpaint"

    def __init__(self, cfg: TrainConfig, device):
        from ..stages.loop import make_scheduler

        self.cfg, self.device = cfg, device
        self.vae = _frozen(cfg.vae, "vae", load_vae, device)
        self.dino = _frozen(cfg.dino, "dino", lambda p: load_image_encoder(p, "dinov2"), device)
        self.clip = _frozen(cfg.clip, "clip", lambda p: load_image_encoder(p, "clip"), device) if cfg.variant == "paper" else None
        self.scheduler = _ddpm(make_scheduler("ddpm"))
        if cfg.init:
            self.model = inpaint_as_variant(load_checkpoint(cfg.init, expect="inpaint"), cfg.variant)
        else:
            self.model = demo.build_inpaint(cfg.variant)
            torch.nn.init.zeros_(self.model.pose_proj.conv_out.weight)  # official: zero-initialised
            torch.nn.init.zeros_(self.model.pose_proj.conv_out.bias)
        self.model.requires_grad_(True)
        self._kept: dict[int, dict] = {}  # --pool: each kept pair's encodings
        self._dropped: Optional[dict] = None  # --pool: the encoders' outputs for a dropped (zeroed) image

    def loss(self, model, batch, gen):
        return self._loss_from(model, self.encodings(batch), gen)

    def _loss_from(self, model, enc: dict, gen):
        """The step from a batch's frozen encodings: posterior draws, condition dropout (a dropped image's
        encoding is the encoder's output for zeros), then the denoising loss."""
        with torch.no_grad():
            x0 = vae_ops.sample_posterior(self.vae, enc["canvas_mean"], enc["canvas_std"], gen)
            masked_lat = vae_ops.sample_posterior(self.vae, enc["masked_mean"], enc["masked_std"], gen)
            tokens = _drop_to(enc["tokens"], self._dropped["tokens"], self.cfg.drop_rate, gen)
            emb = None
            if self.clip is not None:
                emb = _drop_to(enc["emb"], self._dropped["emb"], self.cfg.drop_rate, gen)
        return self._denoising_loss(model, x0, masked_lat, tokens, emb, enc["poses"], gen)

    def _denoising_loss(self, model, x0, masked_lat, tokens, emb, poses, gen):
        inner = getattr(model, "module", model)
        b, _, h, w = x0.shape
        mask = keep_mask(h, w, b, x0.device, x0.dtype)
        x_t, noise, t = _noisy(self.scheduler, x0, gen, self.cfg.noise_offset)
        poses = im.to_model_range(poses).to(self.device)
        context = inner.context(tokens, emb)
        pred = model(torch.cat([x_t, mask, masked_lat], dim=1), t, context, inner.pose_proj(poses), emb)
        return F.mse_loss(pred.float(), noise.float())

    # --pool: the frozen encodings of a pair (VAE posteriors, DINOv2 tokens, CLIP embedding, skeletons) do not
    # change during training, so a run that draws its pairs from a fixed pool computes them once per pair and
    # keeps them. The random draws are made as ``loss`` makes them (posterior noise, then condition dropout, with
    # a dropped image's encoding being the encoder's output for zeros), so a step on a kept pair equals a step on
    # the same pair freshly rendered.

    @torch.no_grad()
    def encodings(self, batch: Batch) -> dict:
        """A batch's frozen encodings, per pair (no random draws)."""
        size = self.cfg.size
        out = {}
        out["canvas_mean"], out["canvas_std"] = vae_ops.encode_posterior(
            self.vae, im.to_model_range(im.side_by_side(batch.source, batch.target)))
        out["masked_mean"], out["masked_std"] = vae_ops.encode_posterior(
            self.vae, im.to_model_range(im.side_by_side(batch.source, torch.zeros_like(batch.target))))
        out["tokens"] = self.dino(preprocess(batch.source, size).to(self.device))
        if self.clip is not None:
            out["emb"] = self.clip(preprocess(batch.target, size).to(self.device))
        if self._dropped is None:  # the encoders' outputs for a dropped (zeroed) image, once
            zeros = torch.zeros_like(preprocess(batch.source[:1], size)).to(self.device)
            self._dropped = {"tokens": self.dino(zeros)[0], "emb": self.clip(zeros)[0] if self.clip is not None else None}
        out["poses"] = im.side_by_side(batch.source_skeleton, batch.target_skeleton)
        return out

    def step_loss(self, model, data, indices, gen):
        if not self.cfg.pool:
            return super().step_loss(model, data, indices, gen)
        return self._loss_from(model, self._keep(data, indices, self.encodings), gen)

    def export(self, model, path, dtype=None):
        return save_checkpoint(model, path, dtype=dtype, extra={"pcdms.size": json.dumps(list(self.cfg.size))})


class RefineStage(Stage):
    name = "refine"

    def __init__(self, cfg: TrainConfig, device):
        from ..stages.loop import make_scheduler

        self.cfg, self.device = cfg, device
        if not cfg.coarse or not Path(cfg.coarse).exists():
            raise InputError("refining trains on stage-2 outputs: make them first (python -m pcdms_core train "
                             "make-coarse ...) and pass --coarse")
        cache = torch.load(cfg.coarse, weights_only=True)
        self.coarse = cache["images"]  # uint8 [N, 3, H, W] for pair indices 0..N-1 of cfg.seed's data
        if cfg.data == "synthetic" and cache.get("seed", cfg.seed) != cfg.seed:
            raise InputError(f"{cfg.coarse} holds stage-2 outputs for the synthetic pairs of seed {cache['seed']}, "
                             f"but this run draws the pairs of seed {cfg.seed}: train with --seed {cache['seed']} "
                             f"(or make the outputs again with make-coarse --seed {cfg.seed})")
        self.vae = _frozen(cfg.vae, "vae", load_vae, device)
        self.dino = _frozen(cfg.dino, "dino", lambda p: load_image_encoder(p, "dinov2"), device)
        self.scheduler = _ddpm(make_scheduler("ddpm"))
        if cfg.init and inspect_checkpoint(cfg.init).stage == "inpaint":
            self.model = refine_from_inpaint(load_checkpoint(cfg.init, expect="inpaint"))
        else:
            self.model = load_checkpoint(cfg.init, expect="refine") if cfg.init else demo.build_refine()
        self.model.requires_grad_(True)

    FRESH = (10**6, 10**7)  # the pair indices --degrade draws from: far past any stage-2 output set

    def indices(self, step: int, batch_size: int, rank: int, world: int) -> list[int]:
        n = self.coarse.shape[0]
        seed = self.cfg.seed * 7919 + step * 131 + rank
        indices = torch.randint(0, n, (batch_size,), generator=torch.Generator().manual_seed(seed)).tolist()
        if self.cfg.degrade:
            g = torch.Generator().manual_seed(seed + 77)
            fresh = (torch.rand(batch_size, generator=g) < self.cfg.degrade).tolist()
            new = torch.randint(*self.FRESH, (batch_size,), generator=g).tolist()
            indices = [k if f else i for i, f, k in zip(indices, fresh, new)]
        return indices

    def loss(self, model, batch, gen):
        cfg = self.cfg
        inner = getattr(model, "module", model)
        index = torch.tensor(batch.index)
        n = self.coarse.shape[0]
        coarse = self.coarse[index.clamp(max=n - 1)]
        if cfg.degrade:  # pairs past the stage-2 outputs get a made-up coarse image
            made_up = degrade_target(batch.target, batch.target_skeleton, batch.target_mask, gen)
            coarse = torch.where((index < n).view(-1, 1, 1, 1), coarse, made_up)
        source, target = batch.source, batch.target
        if cfg.augment:
            source, coarse, target = _joint_augment(gen, source, coarse, target)
        with torch.no_grad():
            x0 = vae_ops.encode(self.vae, im.to_model_range(target), gen)
            cond = vae_ops.encode(self.vae, _drop(im.to_model_range(coarse), cfg.drop_rate, gen), gen)
            tokens = self.dino(preprocess(source, cfg.size).to(self.device))
        x_t, noise, t = _noisy(self.scheduler, x0, gen, cfg.noise_offset)
        pred = model(torch.cat([x_t, cond], dim=1), t, inner.image_proj(tokens))
        return F.mse_loss(pred.float(), noise.float())

    def export(self, model, path, dtype=None):
        return save_checkpoint(model, path, dtype=dtype, extra={"pcdms.size": json.dumps(list(self.cfg.size))})


def _unet_like(unet, **changes):
    """A UNet of ``unet``'s config with ``changes``, holding every weight of ``unet`` whose name and shape fit."""
    config = dict(unet.config, **changes)
    new = glue.UNet2DConditionModel(**glue.accepted_kwargs(glue.UNet2DConditionModel, config))
    weights, mine = unet.state_dict(), new.state_dict()
    for key, value in mine.items():
        if key in weights and weights[key].shape == value.shape:
            mine[key] = weights[key].clone()
    new.load_state_dict(mine)
    return new


def inpaint_as_variant(model: InpaintModel, variant: str) -> InpaintModel:
    """A stage-2 model of the other variant that starts from this one's weights: the no-prior variant from a paper
    model drops the class embedding (the prior's embedding); the paper variant from a demo model gains one whose
    output layer starts at zero, so that it first behaves as the demo model did. Same UNet, pose encoder and
    projector otherwise."""
    if model.variant == variant:
        return model
    if variant == "paper":
        unet = _unet_like(model.unet, class_embed_type="projection",
                          projection_class_embeddings_input_dim=model.unet.config.cross_attention_dim)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.weight)
        torch.nn.init.zeros_(unet.class_embedding.linear_2.bias)
    else:
        unet = _unet_like(model.unet, class_embed_type=None, projection_class_embeddings_input_dim=None)
    return InpaintModel(unet, copy.deepcopy(model.pose_proj), copy.deepcopy(model.image_proj), variant)


def refine_from_inpaint(inpaint: InpaintModel) -> RefineModel:
    """A refining model that starts from a trained stage-2 model, as the official stage 3 starts from SD 2.1's UNet:
    the same UNet (every weight whose shape matches) and image projector; conv_in's noisy-latent and
    masked-source-latent input channels become the noisy-latent and coarse-latent ones (the mask channel is
    dropped); a paper model's class embedding (the prior's embedding, which stage 3 does not take) is left out."""
    latent = (inpaint.unet.config.in_channels - 1) // 2
    unet = _unet_like(inpaint.unet, in_channels=2 * latent, class_embed_type=None,
                      projection_class_embeddings_input_dim=None)
    w = inpaint.unet.conv_in.weight.detach()
    with torch.no_grad():
        unet.conv_in.weight.copy_(torch.cat([w[:, :latent], w[:, latent + 1:2 * latent + 1]], dim=1))
    return RefineModel(unet, copy.deepcopy(inpaint.image_proj))


STAGES = {"vae": VaeStage, "prior": PriorStage, "inpaint": InpaintStage, "refine": RefineStage}


def _config(model):
    return getattr(model, "module", model).config


def _ddpm(scheduler):
    """A DDPM scheduler with the same betas, for ``add_noise`` during training."""
    from ..diffusers_glue import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)


@torch.no_grad()
def _embedding_stats(clip: ImageEncoder, cfg: TrainConfig) -> tuple[float, float]:
    """Mean and std of the encoder's image embeddings over 256 training images (the prior's normalisation)."""
    data = _data(cfg)
    b = data.batch(list(range(128)))
    emb = clip(preprocess(torch.cat([b.source, b.target]), cfg.size).to(next(clip.parameters()).device))
    return float(emb.mean()), float(emb.std())


# --- the loop ---------------------------------------------------------------------------------------------------------

class _Ema:
    """An exponential moving average of the trained weights (``decay``, warmed up as diffusers' EMAModel does:
    ``min(decay, (1 + n) / (10 + n))`` after n updates). Saved beside each checkpoint, restored on resume; a run
    resumed from a checkpoint without one starts its average there."""

    FILE = "ema.safetensors"

    def __init__(self, params: list, decay: float, resume_from: Optional[Path] = None):
        from safetensors.torch import load_file

        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]
        self.updates = 0
        if resume_from is not None and (resume_from / self.FILE).exists():
            saved = load_file(str(resume_from / self.FILE))
            if len(saved) == len(self.shadow) + 1:
                self.shadow = [saved[str(i)].to(p.device) for i, p in enumerate(self.shadow)]
                self.updates = int(saved["updates"])

    @torch.no_grad()
    def update(self, params: list) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, params):
            s.mul_(d).add_(p.detach().float(), alpha=1 - d)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {str(i): s.contiguous() for i, s in enumerate(self.shadow)}
        tensors["updates"] = torch.tensor(self.updates)
        save_file(tensors, str(folder / self.FILE))

    @torch.no_grad()
    def copy_to(self, params: list) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Run (or resume) a training run; returns the exported model's path.

    The run is decided by ``cfg.seed``: the model's initial weights (when it starts from scratch), the pairs and
    every draw, so the same command gives the same run. Torch's global random state is seeded for the run (the
    initialisation and any dropout draw from it) and given back to the caller as it was afterwards."""
    devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        return _train(cfg, progress)


def _train(cfg: TrainConfig, progress: bool) -> Path:
    try:
        from accelerate import Accelerator
    except ImportError:
        raise PCDMsError("training needs the accelerate package, which the nodes do not: "
                           "pip install accelerate (or pip install -r requirements-dev.txt)") from None
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # several processes on a machine without CUDA (torchrun --nproc_per_node N on a CPU): accelerate's CPU
    # data-parallel mode, which it otherwise only enters when told (ACCELERATE_USE_CPU)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=several and not torch.cuda.is_available())
    stage = STAGES[cfg.stage](cfg, acc.device)
    data = _data(cfg)
    params = [p for p in stage.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.hyper("lr"), betas=(0.9, 0.999), weight_decay=cfg.hyper("weight_decay"), eps=1e-8)
    model, opt = acc.prepare(stage.model, opt)
    start = 0
    saved = _checkpoints(out)
    if saved:
        acc.load_state(str(saved[-1]))
        start = int(saved[-1].name.split("_")[1])
    ema = _Ema(params, cfg.ema, saved[-1] if saved else None) if cfg.ema > 0 else None
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.stage}",
               disable=not (progress and acc.is_local_main_process))
    log = open(out / "loss.jsonl", "a")
    rank, world = acc.process_index, acc.num_processes
    t0 = time.time()
    for step in bar:
        indices = stage.indices(step, cfg.batch_size, rank, world)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        loss = stage.step_loss(model, data, indices, gen)
        acc.backward(loss)
        acc.clip_grad_norm_(params, cfg.hyper("grad_clip"))
        opt.step()
        opt.zero_grad()
        if ema is not None:
            ema.update(params)
        value = float(loss.detach())
        bar.set_postfix(loss=f"{value:.4f}")
        if acc.is_main_process and (step % cfg.log_every == 0 or step + 1 == cfg.steps):
            log.write(json.dumps({"step": step, "loss": value, "seconds": round(time.time() - t0, 2)}) + "\n")
            log.flush()
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            acc.wait_for_everyone()
            acc.save_state(str(out / "checkpoints" / f"step_{step + 1}"))
            if ema is not None and acc.is_main_process:
                ema.save(out / "checkpoints" / f"step_{step + 1}")
            for old in _checkpoints(out)[:-cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    log.close()
    acc.wait_for_everyone()
    path = out / f"{cfg.stage if cfg.stage != 'inpaint' or cfg.variant == 'paper' else 'inpaint_noprior'}.safetensors"
    if acc.is_main_process:
        model.eval()
        if ema is not None:
            ema.copy_to(params)  # the last checkpoint keeps the raw weights; the exported model is the average
        stage.export(acc.unwrap_model(model), path)
        if cfg.export_to:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.export_dtype]
            stage.export(acc.unwrap_model(model), Path(cfg.export_to), dtype)
    return path


def losses(out) -> list[dict]:
    path = Path(out) / "loss.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# --- stage-3 data, and the stand-in encoders ----------------------------------------------------------------------

@torch.no_grad()
def make_coarse(inpaint_path, out, *, count: int, seed: int = 0, steps: int = 10, batch_size: int = 32,
                size: tuple[int, int] = bundled.SIZE, vae=None, clip=None, dino=None, scheduler: Optional[str] = None,
                guidance_scale: Optional[float] = None, prior=None, progress: bool = True) -> Path:
    """Stage-2 outputs for training pairs 0..count-1, saved as uint8 for refining's training. The paper model gets
    the real target embedding, as the official batch test on the training list does, or, with ``prior`` (a
    stage-1 checkpoint), the prior's prediction from the source embedding and both poses: the embedding
    stage 2 gets at inference, so refining learns from coarse images like the ones it will be given."""
    from tqdm.auto import tqdm

    model = load_checkpoint(inpaint_path, expect="inpaint")
    if prior is not None and not model.uses_prior:
        raise InputError("--prior needs the paper inpainting model: the no-prior variant takes no embedding")
    vae_model = load_vae(vae or bundled.demo_file("vae"))
    dino_model = load_image_encoder(dino or bundled.demo_file("dino"), "dinov2")
    clip_model = load_image_encoder(clip or bundled.demo_file("clip"), "clip") if model.uses_prior else None
    prior_model = load_checkpoint(prior, expect="prior") if prior is not None else None
    data = SyntheticData(seed, size)
    pipe = PCDMsPipeline(inpaint=model, vae=vae_model, dino=dino_model, prior=prior_model, clip=clip_model)
    settings = StageSettings(steps=steps, guidance_scale=guidance_scale, scheduler=scheduler)
    size = tuple(size)
    chunks = []
    for first in tqdm(range(0, count, batch_size), desc="stage-2 outputs", disable=not progress):
        b = data.batch(list(range(first, min(count, first + batch_size))))
        tokens = dino_model.encode(b.source, size)
        emb = None
        if prior_model is not None:  # the pipeline's own stages, as at inference
            emb = pipe.run_prior(clip_model.encode(b.source, size), b.source_pose, b.target_pose, StageSettings(),
                                 seed=seed * 100_003 + first + 1)
        elif clip_model is not None:
            emb = clip_model.encode(b.target, size)
        coarse = pipe.run_inpaint(b.source, b.source_skeleton, b.target_skeleton, tokens, emb, size, settings,
                                  seed=seed * 100_003 + first)
        chunks.append(im.to_uint8(coarse))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"images": torch.cat(chunks), "seed": seed, "steps": steps, "scheduler": scheduler or "default",
                "embedding": "prior" if prior_model is not None else "target"}, out)
    return out


def write_stand_in_encoders(clip_path, dino_path) -> tuple[Path, Path]:
    """The demo's CLIP and DINOv2 stand-ins: small ViTs frozen at a seeded random initialisation."""
    return (save_image_encoder(demo.build_clip(), clip_path, torch.float16),
            save_image_encoder(demo.build_dino(), dino_path, torch.float16))
