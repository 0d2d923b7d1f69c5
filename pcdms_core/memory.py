"""Host memory discipline on CPU: give freed memory back between stages, keep it for reuse within one.

Two glibc behaviours cost time or memory at the official sizes, measured on a 2-core Linux machine:

* between stages, freed blocks below glibc's self-raising mmap threshold stay inside the heap, so a process can
  stay gigabytes larger than what it holds (CLIP's 2.4 GB stayed resident after ``del``): ``release_memory``
  collects, then ``malloc_trim`` hands them back;
* within a stage, every large activation (stage 2's UNet allocates and frees about 5 GB of them per step) is by
  default a fresh ``mmap`` that is unmapped again when freed, so the kernel faults it in page by page and zeroes
  it on every step: about 1.4 million page faults and several seconds of system time per stage-2 step.
  ``reuse_freed_memory`` serves allocations from the heap and keeps freed memory there for the next step, then
  trims on exit; the numbers computed are the same, only where the memory comes from changes. The heap settles
  after the first steps (until then glibc's per-thread cache holds small remainders that keep freed blocks
  apart), so a stage holds somewhat more while it runs: stage 2 alone peaked at 5.06 GiB against 4.88 GiB, the
  three stages in a row at 5.24 against 5.21, for 8% less time end to end.

Where a stage's activations sit in the heap also depends on what was there before: glibc puts a new block into
any free heap chunk it fits before it considers a mapping, so a model loaded after earlier stages filled the holes
they left, and the stage's activations spread around its weights. ``cast_apart`` makes the loaders' large weights
in mappings of their own instead (stage 2 after the encoders and the prior: 4.88 -> 4.98 GiB over its first four
steps, against 5.27 -> 5.37 before; stage 2 alone 4.78 -> 4.86).

On a thread other than the main one (ComfyUI runs nodes on a worker thread) glibc serves allocations from the
thread's own arena, made of heaps of at most 64 MiB, and maps any larger block afresh whatever the settings:
there only the smaller blocks are reused (stage 2: about 790,000 page faults per forward against 870,000 to
995,000 by default on that thread, where the main thread settles near none).

``malloc_trim`` hands back the top of the heap by moving the program break down, which it cannot do once the heap
has stopped being contiguous (glibc carries on in mapped memory when another mapping sits just above the break,
which happens in long-lived processes): then the top, which can be a whole stage's activations after a reuse
block, would stay resident. ``_trim`` releases its pages in place in that case (``madvise``, as glibc itself
does for free blocks inside the heap).

glibc's per-thread cache of small freed blocks (tcache) undoes part of this: the small blocks freed between the
activations stay apart from its free lists, so freed activations cannot merge and the heap's top cannot be handed
back above them. glibc reads that setting only at start-up, so ``python -m pcdms_core`` restarts itself with the
cache off (``glibc_tunables``); other processes (ComfyUI) keep it unless started with ``GLIBC_TUNABLES`` set.

Elsewhere (macOS, Windows, musl, or ``PCDMS_REUSE_MEMORY=0``) the collection runs and nothing else changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import mmap
import sys
import threading
from typing import Iterator, Optional

import torch

from .switches import switch_on

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# what the parameters are set to on leaving: glibc's defaults for the count of mmaps, and for the thresholds the
# values its dynamic adjustment reaches once large blocks have been freed (an explicit setting turns that off)
_RESTORE = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 64 * 2**20))
_KEEP = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # no mmap for large blocks; -1: never trim

_MADV_DONTNEED = 4
_PAGE = 4096
_TOP_LEFT = 2**20  # a heap top smaller than this after trimming is left as it is

_APART = 128 * 2**10  # weights this large or larger get mappings of their own (glibc's initial mmap threshold)

_lock = threading.Lock()
_depth = 0


@functools.lru_cache(maxsize=None)
def _libc() -> Optional[ctypes.CDLL]:
    """glibc, or None where there is none (then the functions here only collect)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("malloc_trim", "mallopt", "gnu_get_libc_version")):
        return None  # musl and others
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    if hasattr(libc, "mallinfo2"):  # glibc 2.33 and later; before it the top stays as malloc_trim leaves it
        libc.mallinfo2.argtypes = []
        libc.mallinfo2.restype = _Mallinfo2
    return libc


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _trim() -> None:
    """``malloc_trim``, then, if the main heap's top block is still large (the heap is not contiguous, so the break
    could not move), take that block, drop its pages and free it again: the address space stays with the heap,
    the memory goes back to the system and is zero-filled if used again."""
    libc = _libc()
    libc.malloc_trim(0)
    # the free block at the top of the main heap (glibc's keepcost); unknown before glibc 2.33
    top = int(libc.mallinfo2().keepcost) if hasattr(libc, "mallinfo2") else 0
    if top < _TOP_LEFT or threading.current_thread() is not threading.main_thread():
        return  # other threads allocate from arenas of their own: the main heap's top is not theirs to take
    # a request this size is served from the top itself (or a free block at least as large), never mapped
    block = libc.malloc(top - _PAGE)  # a chunk header and the top's minimum size must stay free
    if block:
        start = (block + _PAGE - 1) // _PAGE * _PAGE
        end = (block + top - _PAGE) // _PAGE * _PAGE - _PAGE  # the next block's header stays untouched
        if end > start:
            libc.madvise(start, end - start, _MADV_DONTNEED)
        libc.free(block)


def _mallopt(settings) -> bool:
    libc = _libc()
    ok = libc is not None
    for param, value in settings:
        ok = ok and bool(libc.mallopt(param, value))
    return ok


def release_memory() -> None:
    """Collect dropped objects, then hand freed heap memory back to the system (glibc's ``malloc_trim``)."""
    gc.collect()
    if _libc() is not None:
        with _lock:
            _trim()


def cast_apart(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)``, made (where the memory policy is on, for a CPU tensor of ``_APART`` bytes or more) in
    an anonymous mapping of its own instead of glibc's heap. The loaders cast a file's weights with it.

    A model's tensors are the largest long-lived blocks a process holds, and glibc lays a new block into any free
    heap chunk it fits before it considers a mapping, whatever the mmap threshold: so a model loaded after earlier
    stages fills the holes they left, and the next stage's activations, which ``reuse_freed_memory`` keeps in the
    heap, are spread around its weights, touching more pages than they need. Measured at the official size,
    stage 2 after the encoders and the prior held about 0.5 GiB more than stage 2 alone that way. In a mapping
    of its own a weight stays out of the heap, and is handed back to the system the moment its model is freed."""
    nbytes = tensor.numel() * dtype.itemsize
    if tensor.device.type != "cpu" or nbytes < _APART or not reuse_enabled():
        return tensor.to(dtype)
    # private (a forked child gets a copy on write, as with heap memory), page-aligned, zero-filled by the kernel;
    # the tensor keeps the mapping alive and unmaps it when freed
    block = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    out = torch.frombuffer(block, dtype=dtype, count=tensor.numel()).view(tensor.shape)
    return out.copy_(tensor)


def reuse_enabled() -> bool:
    return _libc() is not None and switch_on("PCDMS_REUSE_MEMORY")


@contextlib.contextmanager
def reuse_freed_memory(active: bool = True) -> Iterator[bool]:
    """Within the block, large allocations come from the heap and freed memory stays there for reuse; on leaving
    (the outermost block when nested) the usual policy comes back and the kept memory is trimmed. Yields whether
    it is in effect. ``active=False`` (for example when the work runs on a GPU) makes it do nothing."""
    global _depth
    entered = False
    if active and reuse_enabled():
        with _lock:
            if _depth == 0:
                entered = _mallopt(_KEEP)
                if not entered:  # a parameter was refused: put back what was set
                    _mallopt(_RESTORE)
            else:
                entered = True
            if entered:
                _depth += 1
    try:
        yield entered
    finally:
        if entered:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _trim()
                    _mallopt(_RESTORE)
