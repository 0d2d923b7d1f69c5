"""Host memory policy (pcdms_core.memory): freed memory is reused within a block, handed back after it."""

import resource

import pytest
import torch

from pcdms_core import memory
from pcdms_core.sampling import denoise

glibc = pytest.mark.skipif(memory._libc() is None, reason="needs glibc (Linux): elsewhere the policy does nothing")

MB64 = 16 * 2**20  # floats: a 64 MiB block, above glibc's largest mmap threshold (32 MiB)


def _faults_of_second_allocation() -> int:
    """Minor page faults taken by filling a 64 MiB block allocated just after an equal one was freed, once the
    heap has settled: the first rounds of a fresh heap take new memory while glibc's per-thread cache holds the
    few small remainders of each aligned allocation (seven per size), which keep the freed blocks apart."""
    for _ in range(10):
        x = torch.ones(MB64)
        del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(MB64)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del x
    return faults


@glibc
def test_freed_memory_is_reused_inside_the_block_and_handed_back_after():
    pages = MB64 * 4 // 4096
    assert _faults_of_second_allocation() > pages // 2  # by default a large block is a fresh mapping each time
    with memory.reuse_freed_memory() as on:
        assert on
        assert _faults_of_second_allocation() < pages // 20  # the freed block is reused: no new pages
    assert memory._depth == 0
    assert _faults_of_second_allocation() > pages // 2  # the usual policy is back


@glibc
def test_nesting_an_exception_and_the_switches(monkeypatch):
    pages = MB64 * 4 // 4096
    with pytest.raises(RuntimeError, match="inner"):
        with memory.reuse_freed_memory():
            with memory.reuse_freed_memory() as inner:
                assert inner and memory._depth == 2
                raise RuntimeError("inner")
    assert memory._depth == 0
    assert _faults_of_second_allocation() > pages // 2
    with memory.reuse_freed_memory(active=False) as on:  # e.g. the work runs on a GPU
        assert not on and memory._depth == 0
    monkeypatch.setenv("PCDMS_REUSE_MEMORY", "0")
    with memory.reuse_freed_memory() as on:
        assert not on
        assert _faults_of_second_allocation() > pages // 2


def test_sampling_gives_the_same_numbers_with_and_without_reuse(monkeypatch):
    from diffusers import DDIMScheduler

    def run():
        sched = DDIMScheduler(num_train_timesteps=1000)
        sched.set_timesteps(5)
        w = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
        predict = lambda x, t: torch.einsum("bchw,cd->bdhw", x, w) * 0.1 + float(t) / 1000  # noqa: E731
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        return denoise(sched, latents, predict, guidance_scale=2.0)

    with_reuse = run()
    monkeypatch.setenv("PCDMS_REUSE_MEMORY", "0")
    assert torch.equal(run(), with_reuse)
