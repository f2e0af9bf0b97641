"""Every typed error of Harken, one hierarchy under HarkenError. Each message names the fix."""

from __future__ import annotations

from collections.abc import Sequence


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


# --------------------------------------------------- configuration and commands


class ConfigError(HarkenError):
    """The configuration file, an environment variable or a flag has a bad value."""


class SettingsError(ConfigError):
    """Several bad settings, one self-contained line each: the CLI prints each as its own
    error line (any other error is one line, whatever line breaks its text holds)."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


class EvalError(HarkenError):
    """The evaluation data is missing or unusable."""


class TuneError(EvalError):
    """`harken tune` was given data it cannot tune on."""


class ConfigWriteError(HarkenError):
    """`harken tune` could not update the config file (it is left as it was)."""


class NotEnoughSpeechError(HarkenError):
    """A clip has no speech, or too little to describe a voice."""


# --------------------------------------------------------------------- speakers


class VoiceprintError(HarkenError):
    """A voiceprint could not be stored, found or used."""


class UnknownSpeakerError(VoiceprintError):
    """No voiceprint has that name."""


class ModelMismatchError(VoiceprintError):
    """The voiceprint was enrolled with another speaker model."""


# ----------------------------------------------------------------------- engine


class InferenceError(HarkenError):
    """A forward pass failed (out of memory, device lost, bad input shape)."""


# ------------------------------------------------------------------------- MQTT


class MqttConfigError(HarkenError):
    """MQTT settings that cannot work (bad URL, credentials, certificates); not retried."""


class BrokerError(HarkenError):
    """The embedded broker could not start."""


class ControlError(HarkenError):
    """A control command that was not applied; `code` is machine-readable."""

    def __init__(self, message: str, *, code: str, command: str | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.command = command
        self.request_id = request_id


# ------------------------------------------------------------------ translation


class UnsupportedLanguageError(HarkenError):
    """The translation model has no language token for a requested target language."""


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
