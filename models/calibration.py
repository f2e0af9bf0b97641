"""Speaker thresholds per model: which values suit a checkpoint, and where each came from. Pure.

Every threshold reads a score of ONE model, so it is kept under that model's id:
`tau_active` and `rho_update` threshold the segmentation model's frame activities;
`delta_new`, `threshold` (naming an enrolled person) and `margin` (over the second-best
enrolled voice) threshold the speaker model's cosine similarities. A value that suits one
checkpoint means nothing for another (diart's delta_new = 1.0 was tuned on pyannote's
embedding; on other encoders different people sit well below 1 and it never finds a second
speaker). Each value is resolved, first match wins:

1. the user's plain setting (`[speakers] delta_new = ...`, HARKEN_SPEAKERS__*, a flag);
2. the user's table for that model, `[speakers.calibration."MODEL"]` (`harken tune` writes it);
3. `KNOWN`, this module's table of checkpoints; each entry says whether its values were
   measured and where they come from;
4. `GENERIC`: diart's defaults and the transformers documentation's 0.7.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Key = Literal["tau_active", "rho_update", "delta_new", "threshold", "margin"]
SEGMENTATION_KEYS: tuple[Key, ...] = ("tau_active", "rho_update")
EMBEDDING_KEYS: tuple[Key, ...] = ("delta_new", "threshold", "margin")
KEYS: tuple[Key, ...] = SEGMENTATION_KEYS + EMBEDDING_KEYS

#: (low, high) of each value: activities 0..1, cosine distance (0, 2], similarity -1..1,
#: similarity difference 0..2.
BOUNDS: Mapping[Key, tuple[float, float]] = MappingProxyType({
    "tau_active": (0.0, 1.0), "rho_update": (0.0, 1.0), "delta_new": (0.0, 2.0),
    "threshold": (-1.0, 1.0), "margin": (0.0, 2.0)})

#: For a model nobody calibrated: diart's defaults (tuned for pyannote/segmentation and
#: pyannote/embedding), the transformers x-vector example's 0.7, and a margin that only
#: refuses near-ties (a policy, not a measurement).
GENERIC: Mapping[Key, float] = MappingProxyType({
    "tau_active": 0.6, "rho_update": 0.3, "delta_new": 1.0, "threshold": 0.7, "margin": 0.05})


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """Known values for one checkpoint."""

    values: Mapping[Key, float]
    measured: bool  # False: taken from documentation or derived, not measured by Harken
    source: str


KNOWN: Mapping[str, Calibration] = MappingProxyType({
    # The trained weights cannot be downloaded where Harken is built: nothing here is
    # measured. 0.7 is the threshold of the transformers x-vector verification example for
    # this checkpoint ("the optimal threshold is dataset-dependent"); delta_new is the same
    # decision as a distance (1 - 0.7): a voice the example would call "different" is new.
    "microsoft/unispeech-sat-base-plus-sv": Calibration(
        values={"threshold": 0.7, "delta_new": 0.3}, measured=False,
        source="transformers docs x-vector example (threshold 0.7); delta_new = 1 - 0.7; "
               "not measured"),
    # The model card's example binarises the frame probabilities at 0.5.
    "microsoft/unispeech-sat-base-plus-sd": Calibration(
        values={"tau_active": 0.5}, measured=False,
        source="model card example (probabilities > 0.5); not measured"),
    # Resemblyzer's VoiceEncoder behind tests/resemblyzer_embedder.py: a dev-only adapter (no
    # runtime code loads it), kept here because its values were measured
    # (scripts/measure_speakers.py, docs/speakers.md): delta_new tuned by Optuna (200
    # trials) on the shared dev clips and a 5-speaker LibriSpeech meeting with oracle
    # segmentation; threshold at the EER of librispeech_test_other (5 speakers, 20 clips);
    # margin: false names of a non-enrolled speaker 15/20 -> 3/20 at that threshold, with
    # every enrolled speaker's clip still named right (40/40). Small data: in-sample values.
    "resemblyzer": Calibration(
        values={"delta_new": 0.2976, "threshold": 0.6221, "margin": 0.15}, measured=True,
        source="measured with scripts/measure_speakers.py on ../shared/audio (small, "
               "in-sample)"),
})


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolved:
    value: float
    origin: str  # for messages: where the value came from


def model_of(key: Key, *, speaker_model: str, diarization_model: str) -> str:
    """The model whose score `key` thresholds."""
    return diarization_model if key in SEGMENTATION_KEYS else speaker_model


def resolve(key: Key, *, model_id: str, explicit: float | None,
            user: Mapping[str, Mapping[str, float | None]],
            known: Mapping[str, Calibration] = KNOWN) -> Resolved:
    """One threshold for `model_id` (see the module docstring for the order)."""
    if explicit is not None:
        return Resolved(value=explicit, origin=f"speakers.{key} in your settings")
    mine = user.get(model_id, {}).get(key)
    if mine is not None:
        return Resolved(value=mine, origin=f"your calibration of {model_id}")
    entry = known.get(model_id)
    if entry is not None and key in entry.values:
        how = "measured" if entry.measured else "not measured"
        said = entry.source if how in entry.source else f"{how}: {entry.source}"
        return Resolved(value=entry.values[key], origin=f"known checkpoint {model_id} ({said})")
    return Resolved(value=GENERIC[key], origin="generic default (no calibration for "
                                                f"{model_id}: run `harken tune`)")


def check(key: Key, value: float) -> float:
    """`value` if it is a finite number inside the key's bounds, else ValueError."""
    low, high = BOUNDS[key]
    if not (low <= value <= high) or (key == "delta_new" and value == 0.0):
        raise ValueError(f"{key} must lie in [{low}, {high}]"
                         f"{' and be above 0' if key == 'delta_new' else ''}, got {value}")
    return value
