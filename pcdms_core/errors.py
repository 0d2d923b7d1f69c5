"""Errors that carry a message a user can act on.

Every error raised for bad input (a wrong file, a pose with nobody in it, an image of the wrong size) is a
``PCDMsError`` subclass, so callers such as the ComfyUI nodes can show the message as it is, without a
traceback from deep inside torch.
"""


class PCDMsError(Exception):
    """Base class: the message names the problem and, where there is one, the fix."""


class CheckpointError(PCDMsError, ValueError):
    """A model file is missing, unreadable, of another kind, or does not match its configuration."""


class PoseError(PCDMsError, ValueError):
    """A pose cannot be read or used (no person, too few joints, unknown format)."""


class InputError(PCDMsError, ValueError):
    """An image, tensor or option has an unusable value (size, shape, range)."""


class NumericalError(PCDMsError, ArithmeticError):
    """A model produced NaN or infinite values (half precision that overflowed, a damaged model)."""


class PCDMsWarning(UserWarning):
    """An input is used the official way but distorted (stretched, hugely upscaled, resized back): said, not refused."""
