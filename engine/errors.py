"""Engine errors: sources, devices, files. All subclass HarkenError."""

from __future__ import annotations

from harken.models.errors import HarkenError


class SourceError(HarkenError):
    """Audio input could not be opened or read."""


class AudioFileError(SourceError):
    """A file is missing, empty, not audio, truncated or unreadable."""


class AudioDeviceError(SourceError):
    """No PortAudio, no such input device, or the device went away."""


class SinkError(HarkenError):
    """An output could not be written."""
