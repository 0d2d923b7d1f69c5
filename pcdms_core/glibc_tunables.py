"""glibc's per-thread cache of small freed blocks (tcache) off for the command line's process.

glibc keeps up to seven freed blocks of each small size (up to 1 KiB) per thread, outside its free lists. Inside
``memory.reuse_freed_memory`` every large activation comes from the heap, and the small blocks allocated between
them (about 100 bytes each were found) land right after each one; freed into that cache they are neither
merged with their neighbours nor given back, so a freed activation cannot grow into the next one's space and the
heap grows past what the stage holds, and ``malloc_trim`` cannot hand back anything above the highest of them.
Measured at the official size on a 2-core Linux machine (glibc 2.36), with the cache and without: the 512 x 1024
canvas decode alone peaked at 3.64 and 2.83 GiB, leaving a heap of 0.75 to 2.5 GB and of 0.18 GB behind; the
three stages in a row, twenty steps each, at 4.73 to 5.46 GiB and at 4.64, stage 2 alone at 5.03 and 4.67 GiB;
the stage-2 UNet forward took the same time either way.

glibc reads the setting only when a process starts (``GLIBC_TUNABLES``), so ``python -m pcdms_core`` starts
itself again with it added, once, before it imports anything else. A setting of the user's own for
``glibc.malloc.tcache_count`` is left as it is; ``PCDMS_REUSE_MEMORY=0`` turns this off with the rest of the
memory policy; elsewhere than glibc nothing happens. Torch-free, so that the restart costs no imports.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

from .switches import switch_on

TUNABLE = "glibc.malloc.tcache_count=0"


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def with_tunables(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the cache turned off in ``GLIBC_TUNABLES`` (where it applies: glibc, the memory policy on in
    ``env``, no setting of the user's own)."""
    env = dict(env)
    current = env.get("GLIBC_TUNABLES", "")
    if not _glibc() or not switch_on("PCDMS_REUSE_MEMORY", env) or "glibc.malloc.tcache_count" in current:
        return env
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    return env


def restart_with_tunables() -> None:
    """Start this process again with ``with_tunables`` applied, unless it changes nothing. Call first thing."""
    env = with_tunables(os.environ)
    argv = getattr(sys, "orig_argv", None)  # Python 3.10+: the command line as given, options included
    if env == dict(os.environ) or not argv:
        return
    try:
        os.execve(sys.executable, argv, env)
    except OSError:
        return  # run as we are
