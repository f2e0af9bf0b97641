"""The refine flags through the real CLI: `--refine-language` and `--no-refine-guard` on
run and transcribe (one flag table, app/flags.py), a bad code or a language the model lacks
as one clear line (exit 2), and transcribe with a tiny random Whisper through the real
loading path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import build_tiny_ctc
from tiny_refine_models import build_tiny_whisper

from harken.app import flags
from harken.app.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample.wav"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"captions": build_tiny_ctc("hubert", root / "ctc"),
            "whisper": build_tiny_whisper(root / "whisper"),
            "whisper_en": build_tiny_whisper(root / "whisper-en", english_only=True)}


def harken(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update({"HF_HUB_OFFLINE": "1", "XDG_CONFIG_HOME": "/nonexistent",
                "HARKEN_REFINE__MAX_NEW_TOKENS": "4"})
    return subprocess.run([sys.executable, "-m", "harken.app.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("command", ["run", "transcribe"])
def test_the_flags_set_the_refine_config(command: str) -> None:
    args = flags.build_parser().parse_args(
        [command, "x.wav" if command == "transcribe" else "--no-tui", "--refine-model", "m",
         "--refine-language", "DE", "--no-refine-guard"])
    config = flags.load(args)
    assert (config.config.refine.language, config.config.refine.guard) == ("de", False)
    assert config.origins["refine.language"] == "flag --refine-language"
    assert config.origins["refine.guard"] == "flag --no-refine-guard"
    unset = flags.load(flags.build_parser().parse_args([command, "x.wav"] if command ==
                                                       "transcribe" else [command]))
    assert (unset.config.refine.language, unset.config.refine.guard) == ("en", True)


def test_eval_keeps_no_guard_as_the_same_switch() -> None:
    args = flags.build_parser().parse_args(["eval", "captions", "d", "--no-guard"])
    assert flags.load(args).config.refine.guard is False


def test_a_bad_language_code_is_one_line_from_the_real_cli() -> None:
    proc = harken("transcribe", str(SAMPLE), "--refine-language", "e n", timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--refine-language" in lines[0]
    assert "e.g. en, de or yue" in lines[0]


@pytest.mark.parametrize("bad", ["english", "12", "x", ""])
def test_bad_language_codes_are_refused_by_the_parser(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--refine-language", bad])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "argument --refine-language" in line
    assert "is not a language code" in line


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("HARKEN_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    monkeypatch.setenv("HARKEN_REFINE__MAX_NEW_TOKENS", "4")


@pytest.mark.parametrize(("model", "code", "says"), [
    ("whisper", "it", "Supported codes: de, en, fr"),
    ("whisper_en", "de", "English-only"),
])
def test_a_language_the_model_lacks_is_one_line_naming_the_flag(
        models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        offline: None, model: str, code: str, says: str) -> None:
    rc = main(["transcribe", str(SAMPLE), "--captions-model", str(models["captions"]),
               "--refine-model", str(models[model]), "--refine-language", code,
               "--device-type", "cpu", "--out", str(tmp_path), "--no-progress"])
    assert rc == 2
    out = capsys.readouterr()
    # In-process, transformers was imported before the CLI could turn its load bars off.
    (line,) = [x for x in (out.out + out.err).splitlines()
               if x.strip() and not x.startswith("Loading weights")]
    assert line.startswith("harken: error: ")
    assert f"cannot transcribe {code!r}" in line
    assert says in line
    assert "--refine-language" in line
    assert not list(tmp_path.iterdir())  # it failed before writing anything


def test_transcribe_refines_in_the_language_given_without_the_guard(
        models: dict[str, Path], tmp_path: Path, offline: None) -> None:
    rc = main(["transcribe", str(SAMPLE), "--captions-model", str(models["captions"]),
               "--refine-model", str(models["whisper"]), "--refine-language", "fr",
               "--no-refine-guard", "--device-type", "cpu", "--out", str(tmp_path),
               "--format", "jsonl,txt", "--no-progress"])
    assert rc == 0
    events = [json.loads(line) for line in
              (tmp_path / f"{SAMPLE.stem}.jsonl").read_text().splitlines()]
    refined = [e for e in events if e["type"] == "caption_refined"]
    assert refined
    # Random CTC letters against random Whisper words: the guard would reject every one.
    assert all(e["accepted"] for e in refined if e["text"].strip())
    assert (tmp_path / f"{SAMPLE.stem}.txt").read_text().split() == \
        " ".join(e["text"] for e in refined).split()
