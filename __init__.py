"""ComfyUI-PCDMs: PCDMs pose transfer (prior, inpainting, refining) as ComfyUI nodes.

ComfyUI imports this file and calls ``comfy_entrypoint`` (V3 node API). The method itself is the plain
library ``pcdms_core``; the nodes in ``nodes/`` only adapt it to ComfyUI. Imported outside ComfyUI (for
example by a test runner), it registers nothing.
"""

import importlib.util
import sys


def _inside_comfyui() -> bool:
    if "comfy_api" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("comfy_api") is not None
    except (ImportError, ValueError):
        return False


if _inside_comfyui():
    from .nodes import comfy_entrypoint  # noqa: F401
