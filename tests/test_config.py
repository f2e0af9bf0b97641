"""Configuration precedence, provenance and clear errors."""

from __future__ import annotations

import re
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


def test_the_json_example_is_the_users_own_variable_and_items(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARKEN_OUTPUT__FORMATS", "srt, txt")
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert str(caught.value).endswith("""e.g. HARKEN_OUTPUT__FORMATS='["srt", "txt"]'""")
    monkeypatch.setenv("HARKEN_OUTPUT__FORMATS", '["srt", "txt"]')  # as the example says
    assert load_config().config.output.formats == ["srt", "txt"]


def test_a_bad_list_item_names_where_its_list_was_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARKEN_MQTT__ALLOWED_SITES", '["a", 3]')
    with pytest.raises(ConfigError, match=r"^environment variable HARKEN_MQTT__ALLOWED_SITES "
                                          r"\(mqtt.allowed_sites.1\) is 3"):
        load_config()
    monkeypatch.delenv("HARKEN_MQTT__ALLOWED_SITES")
    path = write(tmp_path, '[translation]\nlanguages = ["de", 5]\n')
    with pytest.raises(ConfigError, match=rf"^translation.languages.1 in {re.escape(str(path))} "
                                          "is 5"):
        load_config(path)


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


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[captions]\nmodel = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"is not UTF-8 text .*save it as UTF-8$") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_block_s_takes_the_range_every_source_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    from harken.engine.sources.blocks import MAX_BLOCK_S, MIN_BLOCK_S, check_block_s

    for ok in (MIN_BLOCK_S, 1.5, MAX_BLOCK_S):
        monkeypatch.setenv("HARKEN_AUDIO__BLOCK_S", str(ok))
        assert check_block_s(load_config().config.audio.block_s) > 0
    for bad in ("0.006", "2.5"):
        monkeypatch.setenv("HARKEN_AUDIO__BLOCK_S", bad)
        with pytest.raises(ConfigError, match=r"HARKEN_AUDIO__BLOCK_S \(audio.block_s\) is"):
            load_config()


def test_a_json_table_variable_is_named_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARKEN_KEYWORDS__THRESHOLDS", '{"yes": 5}')
    with pytest.raises(ConfigError) as err:
        load_config()
    assert str(err.value).startswith("environment variable HARKEN_KEYWORDS__THRESHOLDS "
                                     "(keywords.thresholds)")
    assert "THRESHOLDS__YES" not in str(err.value)
    monkeypatch.setenv("HARKEN_KEYWORDS__THRESHOLDS", '{"yes": "loud"}')
    with pytest.raises(ConfigError, match=r"^environment variable HARKEN_KEYWORDS__THRESHOLDS "
                       r"\(keywords.thresholds.yes\) is 'loud'"):
        load_config()
    monkeypatch.setenv("HARKEN_KEYWORDS__THRESHOLDS", '{"yes": 0.5}')
    origins = {k: o for k, _, o in describe(load_config())}
    assert origins["keywords.thresholds.yes"] == "env HARKEN_KEYWORDS__THRESHOLDS"


def test_a_cross_field_error_names_every_origin(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[vad]\nsplit_search_s = 5\n")
    monkeypatch.setenv("HARKEN_VAD__MAX_SEGMENT_S", "4")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(
        f"vad (from {path} and environment variable HARKEN_VAD__MAX_SEGMENT_S): "
        "max_segment_s (4.0) must be longer than split_search_s (5.0)")
    monkeypatch.delenv("HARKEN_VAD__MAX_SEGMENT_S")
    with pytest.raises(ConfigError) as err:
        load_config(path, flags={"vad": {"max_segment_s": 4}},
                    flag_names={"vad.max_segment_s": "--max-segment"})
    assert str(err.value).startswith(f"vad (from {path} and --max-segment): ")


@pytest.mark.parametrize(("name", "fix"), [
    ("HARKEN_CAPTION__HOP_S", "did you mean HARKEN_CAPTIONS__HOP_S?"),
    ("HARKEN_CAPTIONS_HOP_S", "did you mean HARKEN_CAPTIONS__HOP_S?"),
    ("HARKEN_MQTT_PASWORD", "did you mean HARKEN_MQTT_PASSWORD?"),
    ("HARKEN_BOGUS", "settings are HARKEN_SECTION__KEY with a section of compute, audio"),
])
def test_an_unknown_variable_section_is_an_error(name: str, fix: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError) as err:
        load_config()
    assert str(err.value).startswith(f"environment variable {name}: no such setting "
                                     f"section; {fix}")
    assert str(err.value).endswith(" (or unset it)")


def test_the_projects_own_variables_are_no_settings(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    for name in ("HARKEN_DEBUG", "HARKEN_MQTT_PASSWORD", "HARKEN_SHARED_AUDIO"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HARKEN_CONFIG", str(write(tmp_path, "[vad]\nthreads = 1\n")))
    monkeypatch.setenv("HARKEN_CAPTIONS", '{"hop_s": 0.25}')  # a whole section as JSON
    config = load_config().config
    assert (config.vad.threads, config.captions.hop_s) == (1, 0.25)


@pytest.mark.parametrize("key", ["a\\nb", "a\\rb", "a\\u2028b", "\\u001b[2J", "a\\u202eb"])
def test_a_key_with_control_characters_is_shown_escaped(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'[captions]\n"{key}" = 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.isprintable(), text
    assert key.replace("\\u00", "\\x") in text, text


def test_many_problems_are_capped_and_long_keys_shortened(tmp_path: Path) -> None:
    from harken.app.config import MAX_ECHO_CHARS, MAX_ERROR_LINES

    long = "B" * 10_000
    path = write(tmp_path, "[captions]\n" + "".join(f"k{i} = 1\n" for i in range(300))
                 + f'model = ["{"A" * 10_000}"]\n"{long}" = 2\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).split("\n")
    assert len(lines) == MAX_ERROR_LINES + 1
    assert lines[-1] == f"... and {302 - MAX_ERROR_LINES} more problems like these"
    assert all(len(line) < 4 * MAX_ECHO_CHARS + len(str(path)) for line in lines)
    assert any("AAAA\u2026" in line for line in lines)  # the value, cut


@pytest.mark.parametrize(("text", "needle", "wrong"), [
    ("[mqtt]\nq = 1\n", "mqtt.q in", "did you mean"),
    ("[captions]\nhopp_s = 1\n", "did you mean captions.hop_s?", ""),
    ("[captionz]\nhop_s = 1\n", "did you mean captions?", ""),
    ("[vad]\ncaptions = 1\n", "vad.captions in", "did you mean"),
    ("hop_s = 1\n", "did you mean captions.hop_s (under [captions]) or", "remove it"),
    ("[vad]\ndevice_type = 1\n", "did you mean compute.device_type (under [compute])?", ""),
    ('[speakers.calibration."org/m"]\ndelta_nw = 0.3\n',
     'did you mean speakers.calibration."org/m".delta_new?', ""),
])
def test_did_you_mean_offers_only_keys_valid_there(tmp_path: Path, text: str, needle: str,
                                                   wrong: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert needle in str(err.value)
    assert not wrong or wrong not in str(err.value)


def test_an_unknown_variable_is_reported_with_the_other_problems(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARKEN_VADD__THREADS", "1")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "[vad]\nthreads = -1\n"))
    lines = str(err.value).split("\n")
    assert len(lines) == 2
    assert lines[0].startswith("environment variable HARKEN_VADD__THREADS: no such setting "
                               "section; did you mean HARKEN_VAD__THREADS?")
    assert lines[1].startswith("vad.threads in ")
