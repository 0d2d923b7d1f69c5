"""Errors that carry a message a user can act on.

Every error raised for bad input (a wrong file, a pose with nobody in it, an image of the wrong size) is a
``PCDMsError`` subclass, so callers such as the ComfyUI nodes can show the message as it is, without a
traceback from deep inside torch. Inputs that are used but distorted give a ``PCDMsWarning`` instead;
``reported_warnings`` hands those to a caller (the command line prints them, the nodes log and show them).
"""

import contextlib
import warnings
from typing import Callable, Iterator


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


@contextlib.contextmanager
def reported_warnings(report: Callable[[str], None]) -> Iterator[None]:
    """Within: each PCDMs warning (a ``PCDMsWarning``, or one whose text starts with "PCDMs:") goes to ``report``
    once, by its text; other warnings show as usual."""
    seen: set[str] = set()
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if not (issubclass(category, PCDMsWarning) or text.startswith("PCDMs:")):
            return original(message, category, filename, lineno, file, line)
        if text not in seen:
            seen.add(text)
            report(text)

    with warnings.catch_warnings():
        warnings.simplefilter("always", PCDMsWarning)
        warnings.showwarning = show
        yield
