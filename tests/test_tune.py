"""`harken tune`'s parts: writing the config, replaying model outputs, the search."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from harken.app.tune.config_file import write_calibration
from harken.app.tune.diarization import (
    RANGES,
    TUNED,
    ReplayEmbedder,
    ReplaySegmenter,
    pairs,
    search,
)
from harken.models.errors import ConfigWriteError, TuneError
from harken.models.geometry import FrameGeometry

SV = "microsoft/unispeech-sat-base-plus-sv"


def test_written_values_land_under_the_model_and_the_rest_of_the_file_stays(
        tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('# my settings\n[captions]\nhop_s = 1.0  # slower laptop\n\n'
                    f'[speakers.calibration."{SV}"]\nthreshold = 0.5\n')
    write_calibration(path, {SV: {"delta_new": 0.312345}, "org/sd": {"tau_active": 0.5}})
    text = path.read_text()
    assert "# my settings" in text
    assert "hop_s = 1.0  # slower laptop" in text
    data = tomllib.loads(text)
    assert data["speakers"]["calibration"][SV] == {"threshold": 0.5, "delta_new": 0.3123}
    assert data["speakers"]["calibration"]["org/sd"] == {"tau_active": 0.5}
    write_calibration(path, {SV: {"threshold": 0.75}})  # a second run updates in place
    assert tomllib.loads(path.read_text())["speakers"]["calibration"][SV]["threshold"] == 0.75


def test_a_missing_config_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "config.toml"
    write_calibration(path, {SV: {"threshold": 0.8}})
    assert tomllib.loads(path.read_text())["speakers"]["calibration"][SV] == {"threshold": 0.8}


@pytest.mark.parametrize("text", ["[speakers\nthreshold = 0.7\n", "speakers = 3\n",
                                  "[speakers]\ncalibration = 'x'\n"])
def test_a_config_it_cannot_use_is_never_rewritten(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigWriteError) as err:
        write_calibration(path, {SV: {"threshold": 0.8}})
    assert "\n" not in str(err.value)
    assert str(path) in str(err.value)
    assert path.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temporary left


def test_audio_and_rttm_must_come_in_pairs() -> None:
    with pytest.raises(TuneError, match="AUDIO RTTM pairs"):
        pairs([Path("a.wav"), Path("a.rttm"), Path("b.wav")])
    assert pairs([Path("a.wav"), Path("a.rttm")]) == [(Path("a.wav"), Path("a.rttm"))]


class CountingSegmenter:
    model_id = "fake-sd"
    geometry = FrameGeometry(frame_samples=320, receptive_samples=400)
    num_speakers = 2
    batchable = True

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.calls += len(windows)
        return [np.full((len(w) // 320, 2), float(w[0])) for w in windows]


class CountingEmbedder:
    model_id = "fake-sv"
    geometry = FrameGeometry(frame_samples=320, receptive_samples=400)
    tdnn_context = 0
    batchable = True

    def __init__(self) -> None:
        self.encoded = 0
        self.pooled = 0

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.encoded += len(windows)
        return [np.tile(w[:len(w) // 320 * 320:320, None], (1, 4)) for w in windows]

    def pool(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        self.pooled += 1
        return np.asarray(weights.T @ features, dtype=np.float32)


def test_replayed_models_run_once_per_window_and_give_the_same_outputs() -> None:
    seg, emb = CountingSegmenter(), CountingEmbedder()
    rseg, remb = ReplaySegmenter(seg), ReplayEmbedder(emb)
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal(3200).astype(np.float32) for _ in range(3)]
    weights = rng.random((10, 2)).astype(np.float32)
    first = [remb.pool(f, weights) for f in remb.encode(windows)]
    acts = rseg.encode(windows)
    for _ in range(3):  # later runs: nothing reaches the models
        again = [remb.pool(f, weights) for f in remb.encode(windows[::-1])][::-1]
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(acts, rseg.encode(windows), strict=True):
            np.testing.assert_array_equal(a, b)
    assert (seg.calls, emb.encoded, emb.pooled, rseg.windows) == (3, 3, 3, 3)
    real = emb.pool(emb.encode(windows[:1])[0], weights)
    np.testing.assert_array_equal(first[0], real)
    assert remb.encode(windows[:1])[0].shape == (10, 1)  # as many frames as the model's


def test_search_starts_from_the_current_values_and_never_ends_worse() -> None:
    start = {"tau_active": 0.6, "rho_update": 0.3, "delta_new": 1.0}
    target = {"tau_active": 0.5, "rho_update": 0.2, "delta_new": 0.3}
    seen: list[dict[str, float]] = []

    def score(values: dict[str, float]) -> float:
        seen.append(dict(values))
        return float(sum((values[k] - target[k]) ** 2 for k in TUNED))

    best, after, before = search(score, start, trials=30, seed=1)  # type: ignore[arg-type]
    assert seen[0] == start
    assert before == pytest.approx(score(start))
    assert after <= before
    assert after == pytest.approx(score(best))  # type: ignore[arg-type]
    assert all(RANGES[k][0] <= v <= RANGES[k][1] for k, v in best.items())
    assert after < 0.5 * before  # the search did find its way towards the target
    again, _, _ = search(score, start, trials=30, seed=1)  # type: ignore[arg-type]
    assert again == best  # same seed, same search
