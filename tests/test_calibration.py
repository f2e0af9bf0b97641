"""Which threshold a model gets, and where it came from (models/calibration.py, app config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harken.app.config import load_config
from harken.app.tasks.speakers import diarization_options
from harken.app.tasks.thresholds import overridden, thresholds
from harken.models.calibration import GENERIC, KEYS, KNOWN, model_of, resolve
from harken.models.errors import ConfigError

SV = "microsoft/unispeech-sat-base-plus-sv"
SD = "microsoft/unispeech-sat-base-plus-sd"


def test_order_is_explicit_then_user_table_then_known_then_generic() -> None:
    user = {SV: {"delta_new": 0.42}}
    assert resolve("delta_new", model_id=SV, explicit=0.9, user=user).value == 0.9
    mine = resolve("delta_new", model_id=SV, explicit=None, user=user)
    assert (mine.value, mine.origin) == (0.42, f"your calibration of {SV}")
    known = resolve("delta_new", model_id=SV, explicit=None, user={})
    assert known.value == KNOWN[SV].values["delta_new"]
    assert "not measured" in known.origin
    other = resolve("delta_new", model_id="org/other", explicit=None, user=user)
    assert other.value == GENERIC["delta_new"]
    assert "harken tune" in other.origin


def test_known_checkpoints_say_where_their_values_come_from() -> None:
    for model, entry in KNOWN.items():
        assert entry.source, model
        assert set(entry.values) <= set(KEYS)
        if not entry.measured:
            assert "not measured" in entry.source, model


def test_each_threshold_belongs_to_the_model_whose_score_it_reads() -> None:
    which = {k: model_of(k, speaker_model="sv", diarization_model="sd") for k in KEYS}
    assert which == {"tau_active": "sd", "rho_update": "sd", "delta_new": "sv",
                     "threshold": "sv", "margin": "sv"}


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_config_feeds_the_clustering(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARKEN_CONFIG", raising=False)
    path = _config(tmp_path, f"""
[speakers]
margin = 0.12
[speakers.calibration."{SD}"]
rho_update = 0.2
[speakers.calibration."{SV}"]
delta_new = 0.35
threshold = 0.8
""")
    config = load_config(path).config
    options = diarization_options(config).clustering
    assert (options.tau_active, options.rho_update, options.delta_new) == (0.5, 0.2, 0.35)
    assert (options.enrolled_threshold, options.enrolled_margin) == (0.8, 0.12)
    origins = {k: r.origin for k, r in thresholds(config).items()}
    assert origins["margin"] == "speakers.margin in your settings"
    # tune warns that a plain setting would hide what it writes.
    notes = overridden(config, ("delta_new", "margin"))
    assert len(notes) == 1
    assert notes[0].startswith("speakers.margin = 0.12")
    assert origins["delta_new"] == f"your calibration of {SV}"
    assert origins["tau_active"].startswith(f"known checkpoint {SD}")
    # A different speaker model does not inherit the other model's calibration.
    other = load_config(path, flags={"speakers": {"model": "org/other-sv"}}).config
    assert diarization_options(other).clustering.delta_new == GENERIC["delta_new"]


def test_bad_calibrated_values_are_refused_with_their_key(tmp_path: Path) -> None:
    path = _config(tmp_path, f'[speakers.calibration."{SV}"]\ndelta_new = 3.0\n')
    with pytest.raises(ConfigError, match=r'speakers\.calibration\."microsoft/.*"\.delta_new'):
        load_config(path)
    path = _config(tmp_path, f'[speakers.calibration."{SV}"]\nthreshhold = 0.8\n')
    with pytest.raises(ConfigError, match="threshhold"):
        load_config(path)
