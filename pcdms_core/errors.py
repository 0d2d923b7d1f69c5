"""Errors that carry a message a user can act on.

Every error raised for bad input (a wrong file, a pose with nobody in it, an image of the wrong size) is a
``PCDMsError`` subclass, so callers such as the ComfyUI nodes can show the message as it is, without a
traceback from deep inside torch. Inputs that are used but distorted give a ``PCDMsWarning`` instead;
``reported_warnings`` hands those to a caller (the command line prints them, the nodes log and show them).
"""

import contextlib
import warnings
from contextvars import ContextVar
from typing import Callable, Iterator, Optional


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


_REPORTER: ContextVar[Optional[Callable[[str], None]]] = ContextVar("pcdms_warning_reporter", default=None)


def pcdms_warn(text: str, category: type = PCDMsWarning, stacklevel: int = 2) -> None:
    """Say ``text`` (a PCDMs warning): to the reporter ``reported_warnings`` installed in this context, or, with
    none, as a Python warning of ``category``. The reporter is per thread and task, so nothing process-wide (how
    Python shows warnings, its warning filters) is touched."""
    report = _REPORTER.get()
    if report is not None:
        report(text)
    else:
        warnings.warn(text, category, stacklevel=stacklevel + 1)


@contextlib.contextmanager
def reported_warnings(report: Callable[[str], None]) -> Iterator[None]:
    """Within (in this thread or task): each PCDMs warning goes to ``report``, once by its text, instead of Python's
    warnings; other warnings show as usual."""
    seen: set[str] = set()

    def once(text: str) -> None:
        if text not in seen:
            seen.add(text)
            report(text)

    token = _REPORTER.set(once)
    try:
        yield
    finally:
        _REPORTER.reset(token)
