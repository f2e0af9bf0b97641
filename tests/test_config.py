"""Configuration precedence, provenance and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from harken.app.config import describe, load_config
from harken.models.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("HARKEN_"):
            monkeypatch.delenv(key)
    # Never read the developer's own config file.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "harken.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    loaded = load_config()
    assert loaded.path is None
    assert loaded.config.captions.model == "facebook/hubert-large-ls960-ft"
    assert all(origin == "default" for _, _, origin in describe(loaded))


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path,
                 "[captions]\nhop_s = 0.25\nleft_context_s = 3.0\n[vad]\nhangover_s = 0.7\n")
    monkeypatch.setenv("HARKEN_CAPTIONS__LEFT_CONTEXT_S", "4.5")
    monkeypatch.setenv("HARKEN_VAD__HANGOVER_S", "0.9")
    loaded = load_config(path, flags={"vad": {"hangover_s": 1.1}},
                         flag_names={"vad.hangover_s": "--hangover"})
    c = loaded.config
    assert (c.captions.hop_s, c.captions.left_context_s, c.vad.hangover_s) == (0.25, 4.5, 1.1)
    origins = {k: o for k, _, o in describe(loaded)}
    assert origins["captions.hop_s"] == f"file {path}"
    assert origins["captions.left_context_s"] == "env HARKEN_CAPTIONS__LEFT_CONTEXT_S"
    assert origins["vad.hangover_s"] == "flag --hangover"
    assert origins["captions.right_context_s"] == "default"


def test_harken_config_env_points_at_the_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[compute]\ndevice_type = 'cpu'\n")
    monkeypatch.setenv("HARKEN_CONFIG", str(path))
    assert load_config().config.compute.device_type == "cpu"


@pytest.mark.parametrize(("text", "needle"), [
    ("[vad]\naggressiveness = 'loud'\n", "vad.aggressiveness"),
    ("[vad]\naggressiveness = 7\n", "vad.aggressiveness"),
    ("[vad]\nengine = 'rnnoise'\n", "vad.engine"),
    ("[vad]\nspeech_threshold = 0.3\nrelease_threshold = 0.4\n", "release_threshold"),
    ("[captions]\nhopp_s = 1\n", "did you mean captions.hop_s?"),
    ("[captionz]\nhop_s = 1\n", "did you mean captions?"),
    ("[compute]\ndevice_type = 'tpu'\n", "compute.device_type"),
    ("[output]\nformats = ['srt', 'docx']\n", "docx"),
])
def test_bad_values_name_key_and_origin(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "[captions\nhop_s = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARKEN_CAPTIONS__HOP_S", "fast")
    with pytest.raises(ConfigError, match="HARKEN_CAPTIONS__HOP_S"):
        load_config()


def test_a_list_env_value_that_is_not_json_says_how_to_write_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARKEN_TRANSLATION__LANGUAGES", "de")
    with pytest.raises(ConfigError, match=r"^HARKEN_TRANSLATION__LANGUAGES: .*write it as JSON"):
        load_config()
    monkeypatch.setenv("HARKEN_TRANSLATION__LANGUAGES", '["de"]')
    assert load_config().config.translation.languages == ["de"]


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARKEN_MQTT__PASSWORD", "s3cret-value")
    loaded = load_config()
    shown = {k: v for k, v, _ in describe(loaded)}
    assert shown["mqtt.password"] == "***"
    assert "s3cret-value" not in repr(describe(loaded))


def test_a_table_flag_is_named_as_typed_for_its_leaves() -> None:
    loaded = load_config(flags={"keywords": {"thresholds": {"yes": 0.5}}},
                         flag_names={"keywords.thresholds": "--keywords"})
    origins = {k: o for k, _, o in describe(loaded)}
    assert origins["keywords.thresholds.yes"] == "flag --keywords"
