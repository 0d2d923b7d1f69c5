"""Seeds and noise: every random draw of the stages goes through here, so a seed gives the same numbers on
every device (noise is drawn on the generator's device, in fp32)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .errors import InputError

SeedLike = Union[int, torch.Generator, None]
MAX_SEED = 2**64 - 1  # the seeds ComfyUI's widgets give; each one is its own generator state


def as_generator(seed: SeedLike) -> Optional[torch.Generator]:
    """An int becomes a CPU generator (so the noise is the same on every device); a generator is kept."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be a whole number from 0 to 2**64 - 1 ({MAX_SEED}), got {seed}")
    return torch.Generator("cpu").manual_seed(int(seed))


def randn(shape: Sequence[int], generator: Optional[torch.Generator], device, dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device in fp32, then moved to ``device``/``dtype``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)
