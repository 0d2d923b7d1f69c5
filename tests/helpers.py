"""Helpers shared by the tests (importable as ``helpers``; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

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


def assert_u8_close(actual: torch.Tensor, expected: torch.Tensor, levels: int = 1) -> None:
    assert tuple(actual.shape) == tuple(expected.shape)
    diff = (actual.int() - expected.int()).abs().max().item()
    assert diff <= levels, f"8-bit images differ by {diff} levels"
