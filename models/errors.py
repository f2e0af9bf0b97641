"""Every typed error of Harken, one hierarchy under HarkenError. Each message names the fix."""

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


class KeywordError(HarkenError):
    """A requested keyword is not one the model can spot."""


class SourceError(HarkenError):
    """Audio input could not be opened or read."""


class AudioFileError(SourceError):
    """A file is missing, empty, not audio, truncated or unreadable."""


class AudioDeviceError(SourceError):
    """No PortAudio, no such input device, or the device went away."""


class SinkError(HarkenError):
    """An output could not be written."""


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
