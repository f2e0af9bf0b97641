"""What a new user runs into (issue 10): every mistake ends in one line that names the fix and
exit status 2, never a traceback; flags that would do nothing are refused or noted."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_models import build_tiny_ctc
from tiny_task_models import build_tiny_keyword_model

from harken.app import flags
from harken.app.cli import main
from harken.models.audio import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample.wav"


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user config file, no HARKEN_* settings, offline."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in [n for n in os.environ if n.startswith("HARKEN_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ctc("hubert", tmp_path_factory.mktemp("models") / "hubert")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("harken: error:")]
    assert len(lines) == 1, err
    return lines[0]


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """argparse's refusal: exit 2, its usage and one `error:` line."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if ": error: " in x]
    return line


@pytest.mark.parametrize("bench", ["captions", "keywords", "translation", "speakers"])
def test_bench_with_a_text_file_as_audio_is_one_line(
        bench: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("these are my notes, not audio\n")
    assert main(["bench", bench, "--audio", str(text)]) == 2
    line = one_error_line(capsys)
    assert str(text) in line


@pytest.mark.parametrize(("bench", "flag"), [("captions", "--seconds"), ("keywords", "--seconds"),
                                             ("translation", "--seconds"),
                                             ("speakers", "--minutes")])
@pytest.mark.parametrize("value", ["0", "-3", "nan"])
def test_bench_needs_a_positive_length(bench: str, flag: str, value: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, ["bench", bench, f"{flag}={value}"])
    assert flag in line
    assert "must be above 0" in line


def test_the_pull_command_that_load_errors_print_runs(
        tiny_hubert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The error names `harken models pull ID`; that command must parse and act on ID."""
    missing = "harken-tests/no-such-model-xyz"
    assert main(["transcribe", str(SAMPLE), "--captions-model", missing, "--no-progress",
                 "--device-type", "cpu", "--out", "/nonexistent"]) == 2
    line = one_error_line(capsys)
    fix = re.search(r"`harken (models pull [^`]+)`", line)
    assert fix is not None, line
    assert main(shlex.split(fix.group(1))) == 2  # it runs: offline, so it says so
    assert "cannot pull 'harken-tests/no-such-model-xyz'" in one_error_line(capsys)
    # A folder is "pulled" as it is: its path is printed.
    assert main(["models", "pull", str(tiny_hubert)]) == 0
    assert str(tiny_hubert) in capsys.readouterr().out


@pytest.mark.parametrize("folder", ["./no-such-model", "~/no-such-harken-model", "/no/such/dir"])
def test_a_missing_model_folder_is_reported_as_a_folder(
        folder: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["transcribe", str(SAMPLE), "--captions-model", folder, "--no-progress",
                 "--device-type", "cpu", "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert f"folder {folder!r} does not exist" in line
    assert "models pull" not in line
    assert main(["models", "pull", folder]) == 2
    assert "no such folder" in one_error_line(capsys)


def test_a_keyword_checkpoint_as_captions_model_is_the_wrong_head(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keywords = build_tiny_keyword_model(tmp_path / "kw")
    assert main(["transcribe", str(SAMPLE), "--captions-model", str(keywords), "--no-progress",
                 "--device-type", "cpu", "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "wrong head for the captions task" in line
    assert "sentencepiece" not in line


def test_no_flag_is_taken_for_an_abbreviation(capsys: pytest.CaptureFixture[str]) -> None:
    # `--keywords` is no abbreviation of `--keywords-model` for `models list`...
    assert "unrecognized arguments: --keywords" in usage_error(
        capsys, ["models", "list", "--keywords"])
    # ...nor is any prefix of a longer flag accepted, at any level.
    assert "--captions" in usage_error(capsys, ["run", "--captions", "x"])
    assert "--vers" in usage_error(capsys, ["--vers"])
    parser = flags.build_parser()
    subparsers = [parser]
    while subparsers:
        p = subparsers.pop()
        assert not p.allow_abbrev, p.prog
        for action in p._actions:
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                subparsers += choices.values()


@pytest.mark.parametrize("argv", [["run", "--translate", "de,,fr"],
                                  ["bench", "translation", "--translate", "de,"],
                                  ["bench", "all", "--translate", ","]])
def test_an_empty_language_code_is_refused(capsys: pytest.CaptureFixture[str],
                                           argv: list[str]) -> None:
    line = usage_error(capsys, argv)
    assert "argument --translate:" in line
    assert "language code" in line


def test_format_without_out_or_empty_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--input", str(SAMPLE), "--format", "srt", "--jsonl"]) == 2
    assert "add --out DIR" in one_error_line(capsys)
    assert "at least one format" in usage_error(capsys, ["run", "--format", ""])
    assert "at least one format" in usage_error(capsys, ["transcribe", str(SAMPLE),
                                                         "--format", " , "])


def test_an_empty_format_list_in_the_config_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "harken.toml"
    config.write_text("[output]\nformats = []\n")
    assert main(["transcribe", str(SAMPLE), "--config", str(config)]) == 2
    err = capsys.readouterr().err  # the configuration's own report: a line per bad key
    assert "Traceback" not in err
    assert re.search(r"output\.formats.*at least one format", err)


def test_device_with_input_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--input", str(SAMPLE), "--device", "2", "--jsonl"]) == 2
    line = one_error_line(capsys)
    assert "--device" in line
    assert "drop one of them" in line


def test_a_silent_file_gets_a_no_speech_note(
        tiny_hubert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    silent = tmp_path / "silence.wav"
    sf.write(str(silent), np.zeros(2 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    for argv in (["transcribe", str(silent), "--out", str(tmp_path), "--no-progress"],
                 ["run", "--input", str(silent), "--fast", "--jsonl"]):
        assert main([*argv, "--captions-model", str(tiny_hubert), "--device-type", "cpu"]) == 0
        err = capsys.readouterr().err
        assert f"no speech found in {silent} (2.0 s of audio)" in err
        assert "--vad-aggressiveness" in err
    # Speech gets no such note.
    assert main(["transcribe", str(SAMPLE), "--out", str(tmp_path), "--no-progress",
                 "--captions-model", str(tiny_hubert), "--device-type", "cpu"]) == 0
    assert "no speech" not in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert re.fullmatch(r"harken \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_bare_harken_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: harken")
    for command in ("run", "transcribe", "models", "bench"):
        assert command in out


def test_a_flag_typo_is_named_by_its_command_with_the_closest_flag(
        capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, ["transcribe", str(SAMPLE), "--captions-modle", "x"])
    assert line.startswith("harken transcribe: error: unrecognized arguments")
    assert "did you mean --captions-model?" in line
    assert "harken transcribe --help" in line


def test_outputs_that_exist_are_refused_unless_overwrite(
        tiny_hubert: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reference transcript beside its audio (talk.txt) must survive `transcribe talk.wav`."""
    audio = tmp_path / "talk.wav"
    audio.write_bytes(SAMPLE.read_bytes())
    reference = tmp_path / "talk.txt"
    reference.write_text("THE REFERENCE\n")
    argv = ["transcribe", str(audio), "--out", str(tmp_path), "--format", "srt,txt",
            "--captions-model", str(tiny_hubert), "--no-progress"]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "talk.txt" in line
    assert "--overwrite" in line
    assert reference.read_text() == "THE REFERENCE\n"
    assert not (tmp_path / "talk.srt").exists()  # refused before anything was written
    assert main([*argv, "--overwrite"]) == 0
    assert reference.read_text() != "THE REFERENCE\n"


def test_eval_captions_given_an_audio_file_names_the_fix(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "captions", str(SAMPLE)]) == 2
    assert "is an audio file" in one_error_line(capsys)


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Every line of stderr, each of which must be a self-contained `harken: error:` line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines, err
    assert all(line.startswith("harken: error: ") for line in lines), err
    return lines


def test_one_bad_setting_is_one_line_naming_key_origin_and_expectation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[captions]\nhop_s = "x"\n')
    assert main(["run", "--config", str(config), "--input", str(SAMPLE)]) == 2
    (line,) = error_lines(capsys)
    assert f"captions.hop_s in {config} is 'x'" in line
    assert "must be a valid number" in line

    assert main(["run", "--hop", "99", "--input", str(SAMPLE)]) == 2
    (line,) = error_lines(capsys)
    assert "--hop (captions.hop_s) is 99.0: must be less than or equal to 5" in line

    monkeypatch.setenv("HARKEN_CAPTIONS__HOP_S", "x")
    assert main(["run", "--input", str(SAMPLE)]) == 2
    (line,) = error_lines(capsys)
    assert "environment variable HARKEN_CAPTIONS__HOP_S (captions.hop_s) is 'x'" in line

    monkeypatch.delenv("HARKEN_CAPTIONS__HOP_S")
    monkeypatch.setenv("HARKEN_TRANSLATION__LANGUAGES", "de")  # JSON expected
    assert main(["run", "--input", str(SAMPLE)]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("harken: error: HARKEN_TRANSLATION__LANGUAGES: ")
    assert "write it as JSON" in line


def test_several_bad_settings_are_one_line_each(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[captions]\nhop_s = "x"\nleft_context_s = -1\n[vad]\nbogus = 1\n')
    assert main(["transcribe", "--config", str(config), str(SAMPLE)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 3
    for key in ("vad.bogus", "captions.hop_s", "captions.left_context_s"):
        assert sum(f"{key} in {config}" in x for x in lines) == 1, key
    assert "no such setting; remove it" in lines[0]


@pytest.mark.parametrize("value", ["yes:1.5", "yes:0", "yes:-1", "yes:nan", "yes:abc", "yes:"])
def test_a_bad_keyword_threshold_flag_names_the_flag_and_its_form(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, ["run", "--keywords", value])
    assert "argument --keywords: bad threshold" in line
    assert "WORD:P" in line
    assert "keywords.thresholds" not in line


def test_a_bad_keyword_threshold_in_the_file_names_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "kw.toml"
    config.write_text("[keywords]\nthresholds = {yes = 1.5}\n")
    assert main(["run", "--config", str(config), "--input", str(SAMPLE)]) == 2
    (line,) = error_lines(capsys)
    assert f"keywords.thresholds in {config}" in line
    assert "above 0 and at most 1" in line


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bench that gets as far as its figures (and so its models) fails the test."""
    from harken.app.commands import bench

    def loaded(args: object) -> None:
        raise AssertionError("the bench went on to load its models")

    monkeypatch.setattr(bench, "_figures", loaded)


@pytest.mark.parametrize(("argv", "needle"), [
    (["bench", "captions", "--device-type", "gpu"], "argument --device-type: unknown device"),
    (["bench", "streams", "--device-type", "tpu"], "argument --device-type: unknown device"),
    (["bench", "keywords", "--hop", "0"], "argument --hop: must be at least 0.01"),
    (["bench", "speakers", "--window", "0.5"], "argument --window: must be at least 1"),
    (["bench", "speakers", "--step", "9"], "argument --step: must be at least 0.1 and at most 5"),
])
def test_bad_bench_flags_are_refused_by_the_parser(
        argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert needle in usage_error(capsys, argv)


@pytest.mark.usefixtures("no_models")
@pytest.mark.parametrize(("argv", "needles"), [
    (["bench", "all", "--translate", "xx"], ("'xx'", "--translate", "Supported codes: af",
                                             "the bench's translation model (random weights")),
    (["bench", "translation", "--translate", "de,xx"], ("'xx'", "--translate")),
    (["bench", "speakers", "--step", "3", "--window", "2"], ("--step (3)", "--window (2)")),
    (["bench", "precision", "--audio-root", "no/such/folder"],
     ("--audio-root no/such/folder", "relative to the current folder", "the real path")),
])
def test_bench_flags_are_checked_before_the_models_load(
        argv: list[str], needles: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys)
    for needle in needles:
        assert needle in line
    assert "in the config" not in line  # a bench reads no config file
    assert "random:" not in line


@pytest.mark.usefixtures("no_models")
def test_a_missing_default_audio_root_says_where_it_was_looked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from harken.app.bench import shared_audio

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(shared_audio.ENV, raising=False)
    monkeypatch.setattr(shared_audio, "ROOT", tmp_path / "wt" / "project")
    assert main(["bench", "precision"]) == 2
    line = one_error_line(capsys)
    assert "no shared real-speech folder found ($HARKEN_SHARED_AUDIO, or ../shared/audio " \
           f"beside {tmp_path / 'wt' / 'project'} or its parent folder)" in line
    assert main(["bench", "precision", "--audio-root", "../shared/audio"]) == 2
    line = one_error_line(capsys)
    assert f"--audio-root ../shared/audio is not a folder (relative to the current folder " \
           f"{tmp_path})" in line
    assert "e.g. --audio-root ../shared/audio" not in line  # not the path that just failed


@pytest.mark.usefixtures("no_models")
@pytest.mark.parametrize("bench", ["captions", "all", "streams", "speakers"])
def test_cuda_without_cuda_is_refused_before_the_models_load(
        bench: str, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device-type cuda is valid here")
    assert main(["bench", bench, "--device-type", "cuda"]) == 2
    assert "CUDA is not available" in one_error_line(capsys)


@pytest.mark.parametrize(("argv", "flag"), [
    (["bench", "captions", "--model", "owner/nosuch"], "--model /path/to/folder"),
    (["bench", "streams", "--model", "./no/such/folder"], "given with --model:"),
    (["bench", "keywords", "--model", "owner/nosuch"], "--model /path/to/folder"),
    (["bench", "translation", "--model", "owner/nosuch"], "--model /path/to/folder"),
    (["bench", "speakers", "--architecture", "./no/sv,./no/sd"], "given with --architecture:"),
])
def test_a_bench_model_error_names_the_flag_typed(
        argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert flag in line
    assert "-model" not in line.replace("--model", "")  # no --captions-model and the like
    assert "in the config" not in line


@pytest.mark.parametrize(("argv", "needles"), [
    (["bench", "captions", "--model", "nosuch"], ("--model 'nosuch' is neither a folder nor a "
                                                  "hub id", "hubert-base or hubert-large")),
    (["bench", "streams", "--model", "hubert-larg"], ("did you mean --model hubert-large?",)),
    (["bench", "keywords", "--model", "nosuch"], ("sew-d-mid",)),
    (["bench", "translation", "--model", "nosuch"], ("xls-r-300m-en-to-15",)),
    (["bench", "speakers", "--architecture", "nosv,nosd"], ("--architecture 'nosv'",
                                                            "base or large")),
])
def test_a_bench_model_that_is_no_id_names_the_benchs_own_names(
        argv: list[str], needles: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys)
    for needle in needles:
        assert needle in line
    assert "owner/name" in line
    assert "models pull" not in line


def test_a_model_path_is_quoted_as_typed_in_a_bench_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "captions", "--model", "./no/--captions-model/x"]) == 2
    line = one_error_line(capsys)
    assert "'./no/--captions-model/x'" in line  # the user's path, not rewritten
    assert "given with --model:" in line


def test_a_config_file_that_is_not_utf8_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(b'[captions]\nhop_s = "\xff"\n')
    monkeypatch.setenv("HARKEN_CONFIG", str(config))
    assert main(["config", "show"]) == 2
    (line,) = error_lines(capsys)
    assert line == (f"harken: error: config file {config} is not UTF-8 text (byte 20 cannot "
                    "be read); save it as UTF-8")


def test_a_block_the_sources_refuse_is_refused_by_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARKEN_AUDIO__BLOCK_S", "0.006")
    assert main(["transcribe", str(SAMPLE), "--out", str(tmp_path)]) == 2
    (line,) = error_lines(capsys)
    assert "HARKEN_AUDIO__BLOCK_S (audio.block_s) is '0.006': must be greater than or " \
        "equal to 0.01" in line


@pytest.mark.parametrize("argv", [["config", "show"], ["transcribe", str(SAMPLE)]])
def test_user_text_with_line_breaks_and_escapes_stays_on_one_line(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[captions]\n"a\\nb\\r\\u2028\\u001b[2J" = 1\n')
    assert main([*argv, "--config", str(config)]) == 2
    (line,) = error_lines(capsys)
    assert "captions.a\\nb\\r\\u2028\\x1b[2J in" in line


def test_a_path_with_a_newline_in_an_error_is_shown_escaped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audio = tmp_path / "two\nlines\x1b[2J.wav"
    assert main(["transcribe", str(audio)]) == 2
    (line,) = error_lines(capsys)
    assert "two\\nlines\\x1b[2J.wav" in line


def test_thousands_of_bad_settings_give_a_bounded_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[captions]\n" + "".join(f"k{i} = 1\n" for i in range(5000))
                      + 'model = ["' + "A" * 100_000 + '"]\n')
    assert main(["config", "show", "--config", str(config)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 21
    assert lines[-1] == "harken: error: ... and 4981 more problems like these"
    assert sum(map(len, lines)) < 21 * 250


@pytest.mark.parametrize("bench", ["captions", "keywords", "translation"])
@pytest.mark.parametrize("value", ["0.5", "3601", "1e12"])
def test_a_bench_length_is_bounded_by_the_parser(bench: str, value: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, ["bench", bench, "--seconds", value])
    assert f"argument --seconds: must be from 1 to 3600 seconds, got {value}" in line


def test_a_keyword_given_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, ["run", "--keywords", "a:0.5,b,a:0.9"])
    assert "argument --keywords: keyword 'a' is given twice in 'a:0.5,b,a:0.9'" in line


def test_a_flag_value_with_escapes_stays_on_the_usage_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, ["run", "--hop", "1\n\x1b[2J"])
    assert "'1\\n\\x1b[2J' is not" in line or "\\n\\x1b[2J" in line
    assert line.isprintable()


def test_devices_without_any_names_the_command_that_reads_a_file(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `harken devices` has no --input: the hint names the command that has it
    monkeypatch.setattr("harken.app.commands.devices.list_input_devices", lambda: [])
    assert main(["devices"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().endswith("read a file instead: `harken run --input FILE`")


def test_config_show_without_a_file_says_where_one_would_be_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    expected = tmp_path / "no-config" / "harken" / "config.toml"  # XDG_CONFIG_HOME, above
    assert first == f"# config file: none (defaults); create {expected} or pass --config FILE"
