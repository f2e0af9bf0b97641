"""Typed errors shared by every layer. Each message names the fix."""

from __future__ import annotations


class HarkenError(Exception):
    """Base class: an error a user can cause and fix. The CLI prints it without a traceback."""


class ModelError(HarkenError):
    """A model could not be found, fetched or loaded."""


class ModelNotFoundError(ModelError):
    """The model id or folder does not exist (or is not reachable while offline)."""


class UnsupportedModelError(ModelError):
    """The checkpoint exists but has the wrong head or architecture for the task."""


class DeviceError(HarkenError):
    """The requested compute device (e.g. CUDA) is not available."""


def first_user_error(exc: BaseException) -> HarkenError | None:
    """The first HarkenError in `exc`, looking inside (TaskGroup) exception groups."""
    if isinstance(exc, HarkenError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_user_error(inner)
            if found is not None:
                return found
    return None
