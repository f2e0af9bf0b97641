"""Speaker model ids and thresholds from the configuration: which model each threshold
reads and the value a run will use (models/calibration.py). Imports no torch, so that
`harken config show` stays light."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harken.app.config import HarkenConfig
from harken.models.calibration import KEYS, Key, Resolved, model_of, resolve


def model_key(model: str) -> str:
    """A local folder as its absolute path, so voiceprints match however it was spelt."""
    folder = Path(model).expanduser()
    return str(folder.resolve()) if folder.is_dir() else model


def speaker_model_id(config: HarkenConfig) -> str:
    """The model id voiceprints are stored and compared under."""
    return model_key(config.speakers.model)


def threshold_models(config: HarkenConfig) -> dict[Key, str]:
    """Which model's scores each threshold reads (the model ids calibrations are kept under)."""
    return {key: model_of(key, speaker_model=speaker_model_id(config),
                          diarization_model=model_key(config.speakers.diarization_model))
            for key in KEYS}


def thresholds(config: HarkenConfig) -> dict[Key, Resolved]:
    """tau_active, rho_update, delta_new, threshold and margin for the configured models,
    each with where it came from (models/calibration.py)."""
    s = config.speakers
    user = {model: cal.model_dump() for model, cal in s.calibration.items()}
    return {key: resolve(key, model_id=model, explicit=getattr(s, key), user=user)
            for key, model in threshold_models(config).items()}


def overridden(config: HarkenConfig, keys: Sequence[Key]) -> list[str]:
    """Notes for thresholds a plain setting fixes: a calibration of them would not apply."""
    s = config.speakers
    return [f"speakers.{key} = {getattr(s, key)} is set in your settings and wins over any "
            f"calibration; remove it to use the tuned value" for key in keys
            if getattr(s, key) is not None]
