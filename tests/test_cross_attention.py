"""Cross-attention rows with an all-zero context (pcdms_core.cpu.cross_attention) against diffusers' computation."""

from __future__ import annotations

import copy

import pytest
import torch

from pcdms_core import diffusers_glue as _compat
from pcdms_core.cpu import speed_up
from pcdms_core.cpu.cross_attention import ZeroContextSkipping, skip_zero_context

from helpers import tiny_unet


def _unets():
    plain, cfg = tiny_unet()
    return plain, copy.deepcopy(plain), cfg


def _inputs(cfg, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg["in_channels"], 16, 16, generator=gen)
    ctx = torch.randn(batch, 3, cfg["cross_attention_dim"], generator=gen)
    return x, torch.tensor([10, 500, 900][:batch]), ctx


def _spy(model):
    """Batch sizes the wrapped processors are called with."""
    seen = []
    for m in model.modules():
        if isinstance(getattr(m, "processor", None), ZeroContextSkipping):
            inner = m.processor.inner
            m.processor.inner = lambda attn, h, *a, _inner=inner, **k: seen.append(h.shape[0]) or _inner(attn, h, *a, **k)
    return seen


def test_rows_with_a_zero_context_are_the_output_bias_and_are_not_computed():
    plain, fast, cfg = _unets()
    n_cross = sum(getattr(m, "is_cross_attention", False) for m in plain.modules())
    assert n_cross > 0 and skip_zero_context(fast) == n_cross
    assert skip_zero_context(fast) == 0  # already wrapped
    assert list(plain.state_dict()) == list(fast.state_dict())
    seen = _spy(fast)

    x, t, ctx = _inputs(cfg)
    ctx[0] = 0  # classifier-free guidance: [unconditional, conditional]
    with torch.no_grad():
        want = plain(x, t, encoder_hidden_states=ctx).sample
        got = fast(x, t, encoder_hidden_states=ctx).sample
    assert seen == [1] * n_cross  # only the conditional row reached the attention
    assert torch.equal(got[0], want[0])  # the skipped row: the same numbers, bit for bit
    assert (got[1] - want[1]).abs().max() <= 1e-5 * want[1].abs().max()  # a batch of 1 instead of 2: rounding only

    seen.clear()
    with torch.no_grad():
        zeros = torch.zeros_like(ctx)
        assert torch.equal(fast(x, t, encoder_hidden_states=zeros).sample, plain(x, t, encoder_hidden_states=zeros).sample)
        assert torch.equal(fast(x, t, encoder_hidden_states=ctx.abs() + 1).sample,
                           plain(x, t, encoder_hidden_states=ctx.abs() + 1).sample)
    assert seen == [2] * n_cross  # nothing computed for the zeros; the whole batch when no row is zero


def test_gradients_and_train_mode_take_the_full_computation():
    plain, fast, cfg = _unets()
    skip_zero_context(fast)
    seen = _spy(fast)
    x, t, ctx = _inputs(cfg)
    ctx[0] = 0
    with torch.enable_grad():
        assert torch.equal(fast(x, t, encoder_hidden_states=ctx).sample, plain(x, t, encoder_hidden_states=ctx).sample)
    fast.train()
    plain.train()
    with torch.no_grad():
        assert torch.equal(fast(x, t, encoder_hidden_states=ctx).sample, plain(x, t, encoder_hidden_states=ctx).sample)
    assert set(seen) == {2}


def test_cross_attention_with_key_or_value_biases_or_norms_is_left_alone():
    def attn(**kw):
        return _compat.Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4, **kw)

    assert skip_zero_context(attn()) == 1
    assert skip_zero_context(_compat.Attention(query_dim=8, heads=2, dim_head=4)) == 0  # self-attention
    for module in (attn(bias=True), attn(cross_attention_norm="layer_norm"), attn(residual_connection=True),
                   attn(qk_norm="layer_norm")):
        # a zero context would then give more than the output bias
        assert skip_zero_context(module) == 0 and not isinstance(module.processor, ZeroContextSkipping)


@pytest.mark.parametrize("name", ["s2_paper", "s3"])
def test_speed_up_gives_loaded_unets_that_skip_zero_contexts(models, name):
    """The loaders give diffusers' own processors; ``cpu.speed_up`` (applied by the command line on a CPU) wraps them."""
    model = models(name)
    assert not any(isinstance(getattr(m, "processor", None), ZeroContextSkipping) for m in model.modules())
    unet = speed_up(copy.deepcopy(model)).unet
    cross = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
    assert cross and all(isinstance(m.processor, ZeroContextSkipping) for m in cross)
