"""Host memory policy (pcdms_core.memory): freed memory is reused within a block, handed back after it.

Page faults and resident memory depend on the whole history of the process's heap, so the measurements run in a
fresh interpreter each, once with a normal heap and once with a heap that cannot grow in place (a mapping put just
above the program break before anything is allocated, as happens in long-lived processes): glibc then carries on
in mapped memory and ``malloc_trim`` can no longer hand the heap's top back by itself.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcdms_core import memory
from pcdms_core.sampling import denoise
from pcdms_core.switches import SWITCHES, switch_on

glibc = pytest.mark.skipif(memory._libc() is None, reason="needs glibc (Linux): elsewhere the policy does nothing")
mallinfo2 = pytest.mark.skipif(
    memory._libc() is None or not hasattr(memory._libc(), "mallinfo2"), reason="needs glibc 2.33 or later")

ROOT = Path(__file__).resolve().parents[1]
MB64 = 16 * 2**20  # floats: a 64 MiB block, above glibc's largest mmap threshold (32 MiB)
PAGES = MB64 * 4 // 4096

_CHILD = r"""
import ctypes, json, resource, sys, threading

out = {"blocked": False}
if sys.argv[1] == "blocked":
    libc = ctypes.CDLL(None)
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_long]
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    want = (libc.sbrk(0) + 16 * 4096) // 4096 * 4096
    got = libc.mmap(want, 4096, 3, 0x22 | 0x100000, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS|FIXED_NOREPLACE
    out["blocked"] = got == want

import torch
from pcdms_core import memory

MB64 = 16 * 2**20

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
libc.mallinfo2.restype, libc.mallinfo2.argtypes = Mallinfo2, []

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def faults(alloc):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = alloc()
    n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del x
    return n

def one(n=MB64):
    return faults(lambda: torch.ones(n))

def mapped():
    # whether a request larger than anything free in the heap is given its own mapping (the usual policy) or
    # taken by growing the heap (inside the block); nothing is touched, so nothing becomes resident
    before = libc.mallinfo2()
    block = libc.malloc(before.arena + before.hblkhd + 2**27)
    grew = libc.mallinfo2().hblks > before.hblks
    libc.free(block)
    return grew

def settled(n=MB64):
    # a fresh heap takes new memory for its first rounds while glibc's per-thread cache holds the few small
    # remainders of each aligned allocation (seven per size), which keep the freed blocks apart; a heap that
    # cannot grow in place settles after about nine
    for _ in range(20):
        one(n)
    return one(n)

out["default"], out["mapped_default"] = settled(), mapped()
with memory.reuse_freed_memory() as on:
    out["on"] = on
    out["mapped_inside"] = mapped()
    out["inside"] = settled()
    out["top_inside"] = libc.mallinfo2().keepcost  # size of the free block at the heap's top
    out["rss_inside"] = rss()
out["depth"] = memory._depth
out["rss_after"] = rss()
out["first_after"] = one()
out["mapped_after"] = mapped()

try:
    with memory.reuse_freed_memory():
        with memory.reuse_freed_memory() as inner:
            out["inner"], out["depth_inner"] = inner, memory._depth
            settled()
            raise RuntimeError("inner")
except RuntimeError:
    out["raised"] = True
out["depth_after_raise"] = memory._depth
out["first_after_raise"] = one()
out["mapped_after_raise"] = mapped()

# on a worker thread (where ComfyUI runs nodes) glibc uses the thread's own arena, made of heaps of at most
# 64 MiB: a 32 MiB block is reused inside the block there too (a 64 MiB one is mapped afresh whatever the settings)
def on_thread():
    with memory.reuse_freed_memory():
        out["thread_inside"] = settled(MB64 // 2)
    out["thread_after"] = one(MB64 // 2)
worker = threading.Thread(target=on_thread)
worker.start()
worker.join()

# between stages: many blocks below the mapping threshold grow the heap; freed, they must go back to the system
held = [torch.ones(2 * 2**20) for _ in range(24)]  # 24 x 8 MiB
out["rss_held"] = rss()
del held
memory.release_memory()
out["rss_released"] = rss()
print(json.dumps(out))
"""


def _measure(heap: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PCDMS_REUSE_MEMORY="1")
    done = subprocess.run([sys.executable, "-c", _CHILD, heap], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@mallinfo2
@pytest.mark.parametrize("heap", ["normal", "blocked"])
def test_freed_memory_is_reused_inside_the_block_and_handed_back_after(heap):
    m = _measure(heap)
    if heap == "blocked" and not m["blocked"]:
        pytest.skip("could not place a mapping above the program break (kernel without MAP_FIXED_NOREPLACE)")
    assert m["default"] > PAGES // 2 and m["mapped_default"]  # by default a large block is a fresh mapping
    assert m["on"] and m["inside"] < PAGES // 20  # inside, the freed block is reused: no new pages
    assert not m["mapped_inside"]
    if heap == "blocked":  # the case this heap is for: what the block kept is the heap's top
        assert m["top_inside"] >= MB64 * 4, m
    assert m["depth"] == 0 and m["mapped_after"]  # the usual policy is back
    # on leaving, the kept memory goes back to the system: resident size falls, new pages are faulted in again
    assert m["rss_inside"] - m["rss_after"] > 0.75 * MB64 * 4, m
    assert m["first_after"] > PAGES // 2
    # nested blocks with an exception inside: counted down, and the memory is handed back on the way out
    assert m["inner"] and m["depth_inner"] == 2 and m["raised"] and m["depth_after_raise"] == 0
    assert m["first_after_raise"] > PAGES // 2 and m["mapped_after_raise"]
    assert m["thread_inside"] < PAGES // 40 and m["thread_after"] > PAGES // 4  # a 32 MiB block on a worker thread
    # release_memory between stages hands back what freed blocks below the mapping threshold left in the heap
    assert m["rss_held"] - m["rss_released"] > 0.75 * 24 * 8 * 2**20, m


@glibc
def test_the_switches(monkeypatch):
    with memory.reuse_freed_memory(active=False) as on:  # e.g. the work runs on a GPU
        assert not on and memory._depth == 0
    monkeypatch.setenv("PCDMS_REUSE_MEMORY", "0")
    with memory.reuse_freed_memory() as on:
        assert not on and memory._depth == 0
    monkeypatch.setenv("PCDMS_REUSE_MEMORY", "1")
    with memory.reuse_freed_memory() as on:
        assert on and memory._depth == 1
    assert memory._depth == 0


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_every_switch_reads_the_same_off_words(monkeypatch, name):
    for off in ("0", "false", " No ", "OFF"):
        monkeypatch.setenv(name, off)
        assert not switch_on(name), off
    for on in ("1", "yes", "true"):
        monkeypatch.setenv(name, on)
        assert switch_on(name), on
    monkeypatch.delenv(name)
    assert switch_on(name)  # on unless turned off
    with pytest.raises(KeyError, match="unknown switch"):
        switch_on(name + "_TYPO")


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


def _mapped(address: int) -> bool:
    with open("/proc/self/maps") as f:
        spans = [line.split()[0].split("-") for line in f]
    return any(int(lo, 16) <= address < int(hi, 16) for lo, hi in spans)


def _glibc_bytes() -> int:
    info = memory._libc().mallinfo2()
    return info.uordblks + info.hblkhd  # in use in the heaps, and in glibc's own mappings


@mallinfo2
@pytest.mark.parametrize("policy", ["1", "0"])
def test_weights_are_cast_into_mappings_of_their_own(monkeypatch, tmp_path, policy):
    from safetensors.torch import save_file
    from torch import nn

    from pcdms_core.weights import empty_weights, open_weights, strict_load

    monkeypatch.setenv("PCDMS_REUSE_MEMORY", policy)
    MIB = 2**20
    half = torch.randn(512, 512).half()  # 1 MiB once cast to fp32
    before = _glibc_bytes()
    cast = memory.cast_apart(half, torch.float32)
    from_glibc = _glibc_bytes() - before
    assert cast.dtype == torch.float32 and torch.equal(cast, half.float())
    if policy == "1":  # outside glibc's heap and mappings, page-aligned, and handed back as soon as it is freed
        assert from_glibc < MIB // 4 and cast.data_ptr() % 4096 == 0, from_glibc
        address = cast.data_ptr()
        assert _mapped(address)
        del cast
        assert not _mapped(address)
    else:
        assert from_glibc >= MIB
    small = memory.cast_apart(torch.ones(8).half(), torch.float32)  # below the size, the ordinary cast
    assert torch.equal(small, torch.ones(8))

    # the loaders cast a file's tensors with it
    save_file({k: v.half() for k, v in nn.Linear(512, 512).state_dict().items()}, tmp_path / "w.safetensors")
    with empty_weights():
        model = nn.Linear(512, 512)
    before = _glibc_bytes()
    strict_load(model, open_weights(tmp_path / "w.safetensors"), dtype=torch.float32)
    from_glibc = _glibc_bytes() - before
    assert model.weight.dtype == torch.float32
    assert (from_glibc < MIB // 4) if policy == "1" else (from_glibc >= MIB), from_glibc


def _child_env(policy: str, tunables=None) -> dict:
    """The environment for a child interpreter: the memory policy as given, ``GLIBC_TUNABLES`` only if given."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(PYTHONPATH=str(ROOT), PCDMS_REUSE_MEMORY=policy)
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    return env


_RESTART = r"""
import os, sys
from pcdms_core.glibc_tunables import restart_with_tunables
restart_with_tunables()
print(repr(os.environ.get("GLIBC_TUNABLES")), sys.argv[1:])
"""


@glibc
@pytest.mark.parametrize("given, policy, expected", [
    (None, "1", "glibc.malloc.tcache_count=0"),
    ("glibc.malloc.trim_threshold=1", "1", "glibc.malloc.trim_threshold=1:glibc.malloc.tcache_count=0"),
    ("glibc.malloc.tcache_count=3", "1", "glibc.malloc.tcache_count=3"),  # the user's own setting stays
    (None, "0", None),  # the memory policy off: nothing changes
])
def test_the_command_line_restarts_itself_with_glibc_small_block_cache_off(given, policy, expected):
    out = subprocess.run([sys.executable, "-c", _RESTART, "a", "b c"], env=_child_env(policy, given),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # started again (or not) with the same command line, the setting added once
    assert out.stdout.strip() == f"{expected!r} ['a', 'b c']"


@glibc
@pytest.mark.parametrize("policy, starts", [("1", 2), ("0", 1)])
def test_python_m_pcdms_core_restarts_first_thing(policy, starts):
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "pcdms_core", "--help"], env=_child_env(policy),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "generate" in out.stdout, out.stderr[-2000:]
    modules = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert modules.count("pcdms_core.glibc_tunables") == starts  # once in each process (the options survive)
    assert modules.index("pcdms_core.glibc_tunables") < modules.index("torch")  # before the heavy imports


_PINNED = r"""
import ctypes, json
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_long]
libc.mallopt(-4, 0), libc.mallopt(-1, -1)  # as reuse_freed_memory sets: large blocks from the heap, no trimming
held, blocks, n = [0] * 100_000, [0] * 12, 0  # allocated up front: a list growing would take heap blocks too
start = libc.sbrk(0)
for i in range(6):  # an activation, then a small block allocated after it (about this size was found)
    blocks[2 * i], blocks[2 * i + 1] = libc.malloc(32 * 2**20), libc.malloc(100)
    while blocks[2 * i + 1] < blocks[2 * i]:  # small holes further down are used first: fill them (kept)
        held[n], n = blocks[2 * i + 1], n + 1
        blocks[2 * i + 1] = libc.malloc(100)
for b in blocks:
    libc.free(b)
libc.malloc_trim(0)  # what the block does on leaving
print(json.dumps(libc.sbrk(0) - start))  # what the heap kept
"""


@glibc
def test_glibc_small_block_cache_pins_the_heap_and_the_restart_avoids_it():
    """What the restart is for: small blocks freed between large ones stay in glibc's per-thread cache, which
    keeps them apart from the free lists, so the heap above them cannot be handed back."""
    def kept(tunables):
        out = subprocess.run([sys.executable, "-c", _PINNED], env=_child_env("1", tunables), capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])
    from pcdms_core.glibc_tunables import TUNABLE

    assert kept("glibc.malloc.tcache_count=7") > 5 * 32 * 2**20  # glibc's default: up to the last small block
    assert kept(TUNABLE) < 2**20  # all handed back
