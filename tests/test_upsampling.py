"""The upsamplers computed on the small image (pcdms_core.cpu.upsampling) against diffusers' own computation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pcdms_core import diffusers_glue as _compat
from pcdms_core.networks import vae as vae_ops
from pcdms_core.cpu import speed_up
from pcdms_core.cpu.upsampling import FoldedUpsample2D, fold_upsamplers, fold_weight, upsample_conv

from helpers import fill_random, tiny_unet


def direct(x, weight, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("shape,out_channels", [((1, 3, 5, 7), 4), ((2, 6, 1, 1), 6), ((3, 2, 8, 3), 5), ((1, 16, 6, 10), 8)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_upsample_conv_is_the_upsampling_then_the_convolution(shape, out_channels, with_bias):
    gen = torch.Generator().manual_seed(sum(shape) + out_channels)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    w = torch.randn(out_channels, shape[1], 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(out_channels, generator=gen, dtype=torch.float64) if with_bias else None
    expected = direct(x, w, b)
    got = upsample_conv(x, w, b)
    assert got.shape == expected.shape == (shape[0], out_channels, 2 * shape[2], 2 * shape[3])
    # fp64: the same sum in another order, so equal to rounding
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    # fp32 at a UNet-like width: within a few 1e-6 of the largest value, as the docstring says
    x32 = torch.randn(2, 64, 6, 9, generator=gen)
    w32 = torch.randn(32, 64, 3, 3, generator=gen) / 24
    e32 = direct(x32, w32, None)
    assert (upsample_conv(x32, w32, None) - e32).abs().max() <= 1e-5 * e32.abs().max()


def test_each_phase_of_the_folded_kernel_sums_the_taps_that_read_one_pixel():
    w = torch.arange(9.0).reshape(1, 1, 3, 3)  # taps 0..8, row-major
    k = fold_weight(w)[:, 0]
    assert k.shape == (4, 2, 2)
    rows = {0: [[0], [1, 2]], 1: [[0, 1], [2]]}  # phase -> the taps on each of its two offsets
    for a in (0, 1):
        for b in (0, 1):
            want = [[sum(3 * r + c for r in rows[a][p] for c in rows[b][q]) for q in (0, 1)] for p in (0, 1)]
            assert k[2 * a + b].tolist() == want


def test_folding_a_unet_keeps_its_weights_and_its_outputs(monkeypatch):
    plain, cfg = tiny_unet()
    folded = copy.deepcopy(plain)
    n_up = sum(type(m).__name__ == "Upsample2D" for m in plain.modules())
    assert n_up > 0
    assert fold_upsamplers(folded) == n_up
    assert fold_upsamplers(folded) == 0  # already folded
    assert all(type(m).__name__ != "Upsample2D" for m in folded.modules())
    sd_plain, sd_folded = plain.state_dict(), folded.state_dict()
    assert list(sd_plain) == list(sd_folded)
    assert all(torch.equal(sd_plain[k], sd_folded[k]) for k in sd_plain)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg["in_channels"], 16, 16, generator=gen)
    ctx = torch.randn(2, 3, cfg["cross_attention_dim"], generator=gen)
    t = torch.tensor([10, 500])

    calls = []
    import pcdms_core.cpu.upsampling as up

    real = up.upsample_conv
    monkeypatch.setattr(up, "upsample_conv", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        want = plain(x, t, encoder_hidden_states=ctx).sample
        got = folded(x, t, encoder_hidden_states=ctx).sample
    assert len(calls) == n_up
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()

    # gradients on: the original path, bit for bit (training is unchanged)
    calls.clear()
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        assert torch.equal(folded(xg, t, encoder_hidden_states=ctx).sample, plain(xg, t, encoder_hidden_states=ctx).sample)
    assert not calls
    # in half precision: the original path too
    with torch.no_grad():
        half = folded.to(torch.bfloat16)(x.bfloat16(), t, encoder_hidden_states=ctx.bfloat16()).sample
    assert not calls and half.dtype == torch.bfloat16


def test_an_explicit_output_size_takes_the_original_path():
    up = _compat.Upsample2D(4, use_conv=True)
    fill_random(up, 1)
    ref = copy.deepcopy(up)
    assert fold_upsamplers(up) == 1 and isinstance(up, FoldedUpsample2D)
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        assert torch.equal(up(x, (11, 13)), ref(x, (11, 13)))
        assert up(x).shape == (1, 4, 10, 12)


def test_upsamplers_that_are_not_a_plain_3x3_convolution_are_left_alone():
    for module in (
        _compat.Upsample2D(4, use_conv=False),
        _compat.Upsample2D(4, use_conv_transpose=True),
        _compat.Upsample2D(4, use_conv=True, kernel_size=5, padding=2),
        _compat.Upsample2D(4, use_conv=True, interpolate=False),
    ):
        assert fold_upsamplers(module) == 0 and type(module) is _compat.Upsample2D


def test_the_loaders_give_plain_networks_and_speed_up_folds_them(models):
    """The loaders build diffusers' own modules (what the nodes run); ``cpu.speed_up`` is applied explicitly."""
    for name in ("s2_paper", "s3"):
        unet = models(name).unet
        assert not any(isinstance(m, FoldedUpsample2D) for m in unet.modules())
        fast = speed_up(copy.deepcopy(models(name))).unet
        assert any(isinstance(m, FoldedUpsample2D) for m in fast.modules())
        assert not any(type(m) is _compat.Upsample2D for m in fast.modules())
    assert not any(isinstance(m, FoldedUpsample2D) for m in models("vae").modules())


def test_vae_decode_matches_the_unfolded_decoder(models):
    plain = models("vae")
    vae = speed_up(copy.deepcopy(plain))
    assert any(isinstance(m, FoldedUpsample2D) for m in vae.decoder.modules())
    z = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(3))
    got, want = vae_ops.decode(vae, z), vae_ops.decode(plain, z)
    assert got.shape == want.shape == (1, 3, 64, 96)
    assert (got - want).abs().max() <= 1e-5
