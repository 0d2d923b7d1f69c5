"""PCDMs (Progressive Conditional Diffusion Models, ICLR 2024) as a plain library.

Stage 1 ``prior``, stage 2 ``inpaint``, stage 3 ``refine``; ``checkpoints`` loads the official files,
``encoders`` the CLIP / DINOv2 image encoders, ``pose`` reads and renders poses, ``pipeline`` chains the
stages and ``cli`` is ``python -m pcdms_core``. Nothing here imports ComfyUI.
"""

__version__ = "0.1.0"

from .errors import CheckpointError, InputError, PCDMsError, PoseError  # noqa: F401
