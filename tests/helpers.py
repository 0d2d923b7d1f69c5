"""Helpers shared by the tests (importable as ``helpers``; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

PARITY = Path(__file__).parent / "fixtures" / "parity"
CONFIGS = {
    "s1": PARITY / "configs/s1_prior/config.json",
    "s2_paper": PARITY / "configs/s2_paper_unet/config.json",
    "s2_demo": PARITY / "configs/s2_demo_unet/config.json",
    "s3": PARITY / "configs/s3_unet/config.json",
}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """The forward-level tolerance of the parity set (README §7)."""
    assert tuple(actual.shape) == tuple(expected.shape)
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


def assert_trajectory_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Latents step by step (``[steps, ...]``), each step within ``rel`` of its largest reference value.

    Random denoisers do not denoise, so the latents grow to |x| of about 50 while some elements stay near zero;
    fp32 arithmetic with another reduction order (thread count, SIMD width) moves every element by about 1e-6 of
    the step's scale (README §7), which an element-wise relative check flags at the near-zero elements."""
    assert tuple(actual.shape) == tuple(expected.shape)
    for i, (a, e) in enumerate(zip(actual.float(), expected.float())):
        scale = e.abs().max().item()
        diff = (a - e).abs().max().item()
        assert diff <= rel * scale, f"step {i}: latents differ by {diff:.3g}, more than {rel:g} of their scale {scale:.3g}"


def assert_u8_close(actual: torch.Tensor, expected: torch.Tensor, levels: int = 1) -> None:
    assert tuple(actual.shape) == tuple(expected.shape)
    diff = (actual.int() - expected.int()).abs().max().item()
    assert diff <= levels, f"8-bit images differ by {diff} levels"


def fill_random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with seeded random values (the parity set's rule, roughly: zero-initialised
    layers get values too, so nothing in a test model is trivially zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif name.endswith("weight") or name.endswith("lambda1"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return module.eval()


def tiny_unet(name: str = "s3", seed: int = 5, **changes):
    """A diffusers UNet of the parity set's ``name`` config (with ``changes``), filled by ``fill_random``, built
    directly (not through the loaders, so none of their inference shortcuts); returns it and its config."""
    import json

    from pcdms_core import diffusers_glue as _compat
    cfg = dict(json.loads(CONFIGS[name].read_text()), **changes)
    unet = _compat.UNet2DConditionModel(**_compat.accepted_kwargs(_compat.UNet2DConditionModel, cfg))
    return fill_random(unet, seed), cfg


def save_deepspeed(path: Path, state_dict: dict, dtype: torch.dtype | None = None) -> Path:
    """Save ``state_dict`` the way the official DeepSpeed checkpoints are laid out (``"module"`` + bookkeeping)."""
    from collections import OrderedDict

    sd = OrderedDict((k, (v.to(dtype) if dtype is not None and v.is_floating_point() else v).clone()) for k, v in state_dict.items())
    torch.save(
        {
            "module": sd,
            "buffer_names": [],
            "optimizer": None,
            "param_shapes": [OrderedDict((k, v.shape) for k, v in sd.items())],
            "frozen_param_shapes": None,
            "shared_params": {},
            "lr_scheduler": None,
            "sparse_tensor_module_names": set(),
            "skipped_steps": 0,
            "global_steps": 10,
            "global_samples": 80,
            "dp_world_size": 8,
            "mp_world_size": 1,
            "ds_config": {"train_micro_batch_size_per_gpu": 8},
            "ds_version": "0.10.0",
        },
        path,
    )
    return path


@contextlib.contextmanager
def record_calls(module: torch.nn.Module):
    """Record (args, kwargs, output) of every forward call of ``module``."""
    calls = []

    def hook(mod, args, kwargs, output):
        calls.append((args, kwargs, output))

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()
