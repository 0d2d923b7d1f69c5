"""What the three samplers share: schedulers with the official settings, seeding, CFG and the denoising loop.

The official code samples with diffusers 0.24 schedulers; the settings below reproduce that era's behaviour
with today's diffusers (docs/faithfulness.md, Schedulers):

* the prior: ``UnCLIPScheduler`` with the Kandinsky-2.2 prior values (squared-cosine betas, x0 prediction,
  clip to ±10, ``fixed_small_log`` variance);
* stages 2 and 3: the SD 2.1-base betas (scaled-linear 0.00085 to 0.012, epsilon, ``steps_offset`` 1) with

  - UniPC as ``UniPCMultistepScheduler.from_config(<SD 2.1-base PNDM config>)`` gave it in 0.24:
    ``linspace`` spacing (999, 949, ...) and a last step that lands on sigma(t=0), not on zero;
  - DDIM with ``leading`` spacing (981, 961, ... 1 for 50 steps) and eta 0, as the released no-prior notebook builds it.

Any other scheduler in ``SCHEDULERS`` can be chosen by name; it gets the same betas.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .. import diffusers_glue as glue
from ..errors import InputError, NumericalError
from ..seeding import randn

# The noise schedule the SD 2.1-base UNet (stages 2 and 3) was trained with.
SD21_BASE_BETAS: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)

# The prior's schedule (Kandinsky 2.2 prior scheduler config): x0 prediction on squared-cosine betas.
PRIOR_BETAS: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="sample",
    clip_sample=True,
    clip_sample_range=10.0,
)

# Per-scheduler settings on top of the betas. The first two are the official 0.24-era settings.
SCHEDULER_SETTINGS: dict[str, dict[str, Any]] = {
    "unipc": dict(
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        timestep_spacing="linspace",
        final_sigmas_type="sigma_min",
    ),
    "ddim": dict(timestep_spacing="leading"),
    "unclip": dict(variance_type="fixed_small_log"),
    "ddpm": dict(timestep_spacing="leading", variance_type="fixed_small"),
    "pndm": dict(timestep_spacing="leading", skip_prk_steps=True),
    "euler": dict(timestep_spacing="leading"),
    "euler_ancestral": dict(timestep_spacing="leading"),
    "dpmpp_2m": dict(timestep_spacing="linspace", algorithm_type="dpmsolver++", solver_order=2),
    "heun": dict(timestep_spacing="leading"),
}

# Which schedulers each stage accepts. The prior predicts x0, so only x0-capable schedulers qualify.
PRIOR_SCHEDULERS: tuple[str, ...] = ("unclip", "ddim", "ddpm")
UNET_SCHEDULERS: tuple[str, ...] = (
    "unipc", "ddim", "ddpm", "pndm", "euler", "euler_ancestral", "dpmpp_2m", "heun",
)


def check_scheduler(name, family: str = "sd21") -> str:
    """A scheduler name the stage family ("sd21" for the UNets, "prior") accepts, lower-cased."""
    allowed = PRIOR_SCHEDULERS if family == "prior" else UNET_SCHEDULERS
    if not isinstance(name, str) or name.lower() not in allowed:
        raise InputError(
            f"unknown scheduler {name!r} for the {'prior' if family == 'prior' else 'UNet stages'}; "
            f"choose one of: {', '.join(allowed)}"
        )
    return name.lower()


def make_scheduler(name: str, family: str = "sd21"):
    """A fresh scheduler by name, with the betas of ``family`` ("sd21" for the UNets, "prior")."""
    name = check_scheduler(name, family)
    base = PRIOR_BETAS if family == "prior" else SD21_BASE_BETAS
    return glue.make_scheduler_instance(name, {**base, **SCHEDULER_SETTINGS[name]})


def initial_latents(
    shape: Sequence[int], scheduler, generator, device, dtype, latents: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The starting noise (drawn, or the caller's ``latents``), scaled by the scheduler's initial sigma."""
    return _noise(shape, generator, device, dtype, latents) * scheduler.init_noise_sigma


def _noise(shape: Sequence[int], generator, device, dtype, given: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unit noise of ``shape``: drawn from ``generator``, or the caller's ``given`` noise once its shape is checked."""
    if given is None:
        return randn(shape, generator, device, dtype)
    if tuple(given.shape) != tuple(shape):
        raise InputError(f"initial latents have shape {tuple(given.shape)}, expected {tuple(shape)}")
    return check_finite_input(given, "initial latents").to(device=device, dtype=dtype)


def check_guidance(value, what: str = "guidance scale") -> float:
    """A finite number >= 0 (a guidance scale of 1 or less means no classifier-free guidance, as officially)."""
    number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number < 0:
        raise InputError(f"the {what} must be a finite number of 0 or more (1 or less: no guidance), got {value!r}")
    return number


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < float(strength) <= 1.0:
        raise InputError(f"strength must be a number in (0, 1] (1 starts from pure noise), got {strength!r}")
    return float(strength)


def steps_run(steps: int, strength: float) -> int:
    """How many of ``steps`` a run with ``strength`` takes (all at 1; img2img runs the last ``round(steps *
    strength)``)."""
    return steps if strength >= 1.0 else min(int(round(steps * strength)), steps)


def start_part_way(scheduler, steps: int, strength: float) -> int:
    """Where to start in the ``steps`` timesteps set on ``scheduler`` so as to run only their last ``strength``
    share (img2img, SDEdit; ``strength`` 1 runs them all): an index for ``denoise``'s ``start``. The
    scheduler's own timesteps stay whole (multistep solvers count down to their end)."""
    if strength >= 1.0:
        return 0
    run = steps_run(steps, strength)
    if run < 1:
        raise InputError(
            f"strength {strength} of {steps} steps leaves no step to run; raise the strength or the steps"
        )
    start = (steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return start


def noised_start(
    scheduler, clean: torch.Tensor, start: int, generator, noise: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``clean`` latents noised to the timestep at ``start`` (see ``start_part_way``), with ``noise`` or a fresh
    draw from ``generator``."""
    noise = _noise(clean.shape, generator, clean.device, clean.dtype, noise)
    return scheduler.add_noise(clean, noise, scheduler.timesteps[start : start + 1])


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """The guidance rescale of arXiv 2305.08891 §3.4, as the official pipelines apply it (per sample std)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1.0 - rescale) * guided


@dataclass
class StepInfo:
    """What the per-step callback receives after each scheduler step."""

    step: int  # index of the step just finished, from 0
    total: int  # number of steps in this run
    timestep: int
    latents: torch.Tensor  # the sample after this step
    denoised: Optional[torch.Tensor]  # the scheduler's predicted clean sample, when it can be had cheaply


StepCallback = Callable[[StepInfo], None]


def _predicted_clean(scheduler, step_out, model_output, sample, t) -> Optional[torch.Tensor]:
    x0 = getattr(step_out, "pred_original_sample", None)
    if x0 is not None:
        return x0
    cfg = scheduler.config
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None or getattr(cfg, "prediction_type", None) != "epsilon" or float(scheduler.init_noise_sigma) != 1.0:
        return None
    a = alphas[int(t)].to(device=sample.device, dtype=torch.float32)
    x0 = (sample.float() - (1 - a).sqrt() * model_output.float()) / a.sqrt()
    return x0.to(sample.dtype)


def denoise(
    scheduler,
    latents: torch.Tensor,
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Optional[StepCallback] = None,
    start: int = 0,
) -> torch.Tensor:
    """Run the scheduler's timesteps from index ``start`` on (``set_timesteps`` done by the caller).

    ``predict(x, t)`` returns the network output for the model input ``x``. When ``guidance_scale > 1`` the
    input is the batch ``[x, x]`` and ``predict`` must put its unconditional branch first; the guided output is
    ``u + w (c - u)`` (the official form for every stage), then rescaled when ``guidance_rescale > 0``.
    ``generator`` feeds the schedulers that draw noise during a step (UnCLIP, DDPM, ancestral samplers).
    """
    use_cfg = guidance_scale > 1.0
    timesteps = scheduler.timesteps[start:]
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        x = scheduler.scale_model_input(latents, t)
        out = predict(torch.cat([x, x]) if use_cfg else x, t)
        if use_cfg:
            uncond, cond = out.chunk(2)
            guided = uncond + guidance_scale * (cond - uncond)
            if guidance_rescale > 0.0:
                guided = rescale_guidance(guided, cond, guidance_rescale)
        else:
            guided = out
        prev_t = timesteps[i + 1] if i + 1 < total else None
        step_out = glue.scheduler_step(scheduler, guided, t, latents, generator=generator, prev_timestep=prev_t)
        if callback is not None:
            denoised = _predicted_clean(scheduler, step_out, guided, latents, t)
            latents = step_out.prev_sample
            callback(StepInfo(step=i, total=total, timestep=int(t), latents=latents, denoised=denoised))
        else:
            latents = step_out.prev_sample
    return latents


STAGE_TITLES = {"prior": "stage 1 (the prior)", "inpaint": "stage 2 (inpainting)", "refine": "stage 3 (refining)"}


def check_finite(x: torch.Tensor, stage: str, what: str, vae: bool = False) -> torch.Tensor:
    """``x`` when every value is finite; otherwise one ``NumericalError`` naming the stage (``prior``, ``inpaint``,
    ``refine``) and what to try, so NaN is never passed on (stage 3 and the 8-bit conversion would hide it)."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    bad = int(finite.numel() - finite.sum())
    where = f"{STAGE_TITLES.get(stage, stage)} produced NaN or infinite values in {what} ({bad} of {x.numel()})"
    dtype = str(x.dtype).replace("torch.", "")
    if vae:
        fix = (f"The VAE overflowed (it ran in {dtype}): load the VAE in fp32 or bf16 (the VAE loader's dtype; "
               "--dtype on the command line), or use another VAE, the SD 2.1-base one.")
    else:
        fix = (f"The model ran in {dtype}; half precision can overflow: load the models in bf16 or fp32 (the "
               "loaders' dtype; --dtype on the command line) and lower the guidance if it is high. If fp32 fails "
               "too, the checkpoint is damaged: download it again.")
    raise NumericalError(f"{where}. {fix}")


def check_finite_input(x: torch.Tensor, what: str) -> torch.Tensor:
    """An input tensor (features, embeddings, initial latents) that holds NaN or infinity is refused: the
    node or step that made it failed."""
    if x is not None and torch.is_floating_point(x) and not bool(torch.isfinite(x).all()):
        raise InputError(
            f"the {what} hold NaN or infinite values: the step that made them failed (often half precision that "
            "overflowed). Make them again with the models in fp32 or bf16."
        )
    return x


def common_batch(*named: tuple[str, int]) -> int:
    """The batch that per-source inputs share, from ``(name, count)`` pairs: each count is 1 (one input shared by
    all) or the same N."""
    sizes = {n for _, n in named if n != 1}
    if len(sizes) > 1:
        parts = ", ".join(f"{name} {n}" for name, n in named)
        raise InputError(f"batch sizes do not match ({parts}): give one of each, or the same number of each")
    return sizes.pop() if sizes else 1


def broadcast(x: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """``x`` with batch ``batch``: as it is, or its single item shared by all (the one broadcast rule)."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise InputError(f"the {what} batch has {x.shape[0]} items but the other inputs have {batch}: give one, or {batch}")


def expand_batch(x: torch.Tensor, batch: int, num_images: int) -> torch.Tensor:
    """Per-source conditions ``[B, ...]`` (or a shared ``[1, ...]``) to ``[B * num_images, ...]``."""
    if x.shape[0] == batch:
        return x.repeat_interleave(num_images, dim=0)
    if x.shape[0] == 1:
        return x.expand(batch * num_images, *x.shape[1:])
    raise InputError(f"a condition has batch {x.shape[0]}, but the source batch is {batch}")


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    return steps


MAX_IMAGES = 4096  # images per source in one call: far beyond any memory, so a typo is caught before it runs


def check_count(num_images, what: str = "number of images per source") -> int:
    if isinstance(num_images, bool) or not isinstance(num_images, numbers.Integral) or not 1 <= num_images <= MAX_IMAGES:
        raise InputError(f"the {what} must be a whole number from 1 to {MAX_IMAGES}, got {num_images!r}")
    return int(num_images)


def check_stage_settings(variant: str, *, steps=None, guidance_scale=None, scheduler=None, guidance_rescale=None,
                         strength=None, num_images=1, seed=None) -> None:
    """Every setting of one stage (``variant``: "prior", "paper", "noprior" or "refine"; None: the official
    default), checked as its sampler checks it: callable before any model is loaded, which is what the nodes
    and the command line do, so a bad value costs no loading."""
    from ..seeding import as_generator
    from .defaults import stage_defaults

    d = stage_defaults(variant)
    steps = check_steps(d.steps if steps is None else steps)
    check_guidance(d.guidance_scale if guidance_scale is None else guidance_scale)
    if guidance_rescale is not None:
        check_guidance(guidance_rescale, "guidance rescale")
    family = "prior" if variant == "prior" else "sd21"
    name = check_scheduler(d.scheduler if scheduler is None else scheduler, family)
    if family == "prior" and name == "unclip" and steps < 2:
        raise InputError(
            f"the UnCLIP scheduler needs at least 2 steps (got {steps}); use 2 or more, or the ddim / ddpm scheduler"
        )
    if strength is not None and steps_run(steps, check_strength(strength)) < 1:
        raise InputError(
            f"strength {strength} of {steps} steps leaves no step to run; raise the strength or the steps"
        )
    check_count(num_images)
    if not isinstance(seed, torch.Generator):
        as_generator(seed)
