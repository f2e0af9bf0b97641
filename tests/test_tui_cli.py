"""`harken run` opens the terminal app on a terminal: the real CLI in a tmux pseudo-terminal.

The model is a tiny random CTC checkpoint (no weights can be downloaded here), so its text is
gibberish: the test checks that the captions on the screen are exactly the finals that the
same command prints with --jsonl, and that quitting leaves complete output files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harken.app.commands.run import use_tui
from harken.app.flags import build_parser

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assets" / "sample.wav"
HARKEN = Path(sys.executable).with_name("harken")
TMUX = shutil.which("tmux")
COLUMNS, ROWS = 200, 50  # wide enough that no caption of the sample wraps
SCREEN_TIMEOUT_S = 120.0  # model load + 9 s of audio with --fast, on 2 slow cores
EXIT_TIMEOUT_S = 30.0


@pytest.mark.parametrize(("argv", "tty", "keys", "expected"), [
    (["run"], True, True, True),
    (["run", "--jsonl"], True, True, False),
    (["run", "--no-tui"], True, True, False),
    (["run"], False, True, False),  # a pipe keeps the plain printer
    (["run"], True, False, False),  # `< /dev/null`: no keys to quit the app with
])
def test_the_app_opens_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                          tty: bool, keys: bool, expected: bool) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: keys)
    assert use_tui(build_parser().parse_args(argv)) is expected


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_ctc

    return build_tiny_ctc("hubert", tmp_path_factory.mktemp("tiny-hubert"))


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm-256color"}


class Tmux:
    """A private tmux server (its own socket) running one command in a pseudo-terminal."""

    def __init__(self, socket: str) -> None:
        if TMUX is None:
            raise RuntimeError("tmux is not installed")
        self._base = [TMUX, "-L", socket, "-f", os.devnull]

    def run(self, *args: str) -> str:
        done = subprocess.run([*self._base, *args], capture_output=True, text=True,
                              check=True, timeout=10, env=_env())
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "harken")

    def kill(self) -> None:
        subprocess.run([*self._base, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if TMUX is None:
        pytest.skip("tmux is not installed (apt-get install tmux); it provides the terminal")
    server = Tmux(f"harken-test-{os.getpid()}")
    try:
        yield server
    finally:
        server.kill()


def _start_jsonl_run(model: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(HARKEN), "run", "--input", str(SAMPLE), "--fast", "--jsonl",
         "--captions-model", str(model), "--device-type", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)


def _jsonl_finals(run: subprocess.Popen[str]) -> list[str]:
    stdout, stderr = run.communicate(timeout=SCREEN_TIMEOUT_S)
    assert run.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    return [e["text"].strip() for e in events
            if e["type"] == "caption_final" and e["text"].strip()]


def _caption_pane(screen: str) -> str:
    """The captions pane's text (the first box on each line), all whitespace removed."""
    cells = [m.group(1) for m in re.finditer(r"^│(.*?)│", screen, flags=re.MULTILINE)]
    return re.sub(r"\s+", "", "".join(cells))


def _wait_for(tmux: Tmux, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux.screen()
        if text in screen:
            return screen
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared on the screen; last screen:\n{screen}")


@pytest.mark.slow
def test_harken_run_shows_the_final_captions_in_a_terminal(
        tmp_path: Path, tiny_model: Path, tmux: Tmux) -> None:
    jsonl_run = _start_jsonl_run(tiny_model)  # the same command piped, alongside
    out = tmp_path / "out"
    rc_file = tmp_path / "rc"
    command = shlex.join([str(HARKEN), "run", "--input", str(SAMPLE), "--fast",
                          "--captions-model", str(tiny_model), "--device-type", "cpu",
                          "--out", str(out)])
    tmux.run("new-session", "-d", "-s", "harken", "-x", str(COLUMNS), "-y", str(ROWS),
             "-c", str(ROOT), f"{command}; echo $? > {shlex.quote(str(rc_file))}")

    screen = _wait_for(tmux, "input ended", SCREEN_TIMEOUT_S)
    expected = _jsonl_finals(jsonl_run)
    assert expected, "the tiny model produced no finals for the sample"
    pane = _caption_pane(screen)
    for text in expected:
        assert re.sub(r"\s+", "", text) in pane, f"{text!r} is not on the screen:\n{screen}"
    assert f"{tiny_model.name} on cpu" in screen  # status bar: model and compute device
    assert all(title in screen for title in ("Captions", "Speakers", "Input", "Keywords"))

    tmux.run("send-keys", "-t", "harken", "q")
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while not rc_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rc_file.read_text().strip() == "0"
    txt = (out / f"{SAMPLE.stem}.txt").read_text().splitlines()
    assert txt == expected  # every file flushed and closed on quit
    srt = " ".join((out / f"{SAMPLE.stem}.srt").read_text().split())
    assert all(" ".join(t.split()) in srt for t in expected)
