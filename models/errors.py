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
