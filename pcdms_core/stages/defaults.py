"""The official sampler settings of each stage: the one table every caller reads (the samplers, the pipeline,
the command line and the ComfyUI nodes). Where they come from is written in docs/faithfulness.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

# The official working size of one half of the canvas, (width, height).
OFFICIAL_SIZE = (512, 512)


@dataclass(frozen=True)
class SamplerDefaults:
    steps: int
    guidance_scale: float
    scheduler: str
    # stage 3's official script passes the guidance scale as the rescale too: None means "equal to the scale"
    guidance_rescale: Optional[float] = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


# Keyed by the checkpoint variant: the prior, stage 2 with the prior ("paper"), stage 2 without it ("noprior",
# the released PCDMs_ckpt.pt and its notebook), and stage 3.
DEFAULTS: dict[str, SamplerDefaults] = {
    "prior": SamplerDefaults(steps=20, guidance_scale=1.0, scheduler="unclip"),
    "paper": SamplerDefaults(steps=20, guidance_scale=2.0, scheduler="unipc"),
    "noprior": SamplerDefaults(steps=50, guidance_scale=2.0, scheduler="ddim"),
    "refine": SamplerDefaults(steps=20, guidance_scale=1.0, scheduler="unipc", guidance_rescale=None),
}


def stage_defaults(variant: str) -> SamplerDefaults:
    """The official settings for a checkpoint variant ("prior", "paper", "noprior" or "refine")."""
    try:
        return DEFAULTS[variant]
    except KeyError:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(DEFAULTS)}") from None
