"""Shared fixtures: the parity set (tiny random models in the official layouts, with the numbers the
official implementation produced for them, see tests/fixtures/parity/README.md) loaded through the public
loaders."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pcdms_core.loading import checkpoints, encoders
from pcdms_core.loading.vae import load_vae
from helpers import CONFIGS, PARITY

# The references were computed with 2 CPU threads; the same reduction order keeps differences at the 1e-7 level.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def refs():
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = load_file(str(PARITY / "refs" / f"refs_{name}.safetensors"))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def models():
    """The tiny official-layout models, each loaded once."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            if name in CONFIGS:
                cache[name] = checkpoints.load_checkpoint(PARITY / "checkpoints" / f"{name}.pt", config=CONFIGS[name])
            elif name == "vae":
                cache[name] = load_vae(PARITY / "vae")
            elif name in ("clip_vision", "dinov2"):
                cache[name] = encoders.load_image_encoder(PARITY / name)
            else:
                raise KeyError(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def inputs():
    def get(name: str) -> Image.Image:
        return Image.open(PARITY / "inputs" / name)

    return get
