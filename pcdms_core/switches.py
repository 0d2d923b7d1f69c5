"""The environment switches that turn the pipeline's CPU speed-ups off (each is on unless set to 0 / false / no /
off). They are read each time the work runs, so a switch set mid-process takes effect at the next call."""

from __future__ import annotations

import os
from typing import Mapping, Optional

SWITCHES = {
    "PCDMS_REUSE_MEMORY": "keep freed memory within a stage for the next allocation (memory.py)",
    "PCDMS_FAST_UPSAMPLE": "upsample-then-3x3-convolution as four 2x2 convolutions (upsampling.py)",
    "PCDMS_SKIP_ZERO_CONTEXT": "a cross-attention over an all-zero context as its output bias (cross_attention.py)",
}


def switch_on(name: str, env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether switch ``name`` is on in ``env`` (default: this process's environment)."""
    if name not in SWITCHES:
        raise KeyError(f"unknown switch {name}")
    return (os.environ if env is None else env).get(name, "1").strip().lower() not in ("0", "false", "no", "off")
