"""The terminal app's terminal goes away without a SIGHUP reaching Harken (its pty closed
while the hangup is ignored, as under nohup): Harken notices, stops as a hangup does (the
speech already heard finished, every file complete, exit status 129) instead of spinning
at 100% CPU, deaf to SIGTERM, with the embedded broker still up.

The real CLI runs in a pseudo-terminal made here (pty.openpty), which the test then closes.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_interrupt import free_port

ROOT = Path(__file__).resolve().parents[1]
HARKEN = Path(sys.executable).with_name("harken")
ROWS, COLUMNS = 40, 120
SPEECH_TIMEOUT_S = 60.0  # model load + the first speech, on 2 slow cores
EXIT_TIMEOUT_S = 5.0  # s from the stop (terminal closed, SIGTERM) to the process's end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_ctc

    return build_tiny_ctc("hubert", tmp_path_factory.mktemp("tiny-hubert"))




class Terminal:
    """A pseudo-terminal whose other side the test holds: what it reads is thrown away (a
    terminal emulator would draw it), and close() is the terminal window going away."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.seen = b""
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))

    def child_setup(self, *, ignore_hangup: bool) -> Callable[[], None]:
        def setup() -> None:  # in the child: a session whose controlling terminal it is
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            if ignore_hangup:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)

        return setup

    def drain(self, seconds: float) -> None:
        """Reads what the app sends for `seconds` (nothing once closed)."""
        deadline = time.monotonic() + seconds
        while self.master >= 0 and (left := deadline - time.monotonic()) > 0:
            if select.select([self.master], [], [], min(left, 0.1))[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # EIO: the app's side is closed (it has exited)
                    return

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["terminal closed", "SIGTERM", "SIGTERM, terminal not read"])
def test_the_app_stops_cleanly_when_its_terminal_closes_or_on_sigterm(
        tmp_path: Path, tiny_model: Path, long_sample: Path, terminal: Terminal,
        how: str) -> None:
    """The terminal's hangup is ignored (nohup): closing it must still stop the run, as a
    hangup would (129). SIGTERM stops it the same way (143), also when the terminal no
    longer reads (a frozen link), which once blocked the app's event loop for good."""
    # A terminal that reads draws what it is sent; a frozen one takes nothing.
    wait = terminal.drain if how != "SIGTERM, terminal not read" else time.sleep
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update(HF_HUB_OFFLINE="1", TERM="xterm-256color", XDG_CONFIG_HOME=str(tmp_path / "x"))
    broker: list[str] = []
    port = free_port()
    if shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin"):
        broker = ["--mqtt", "embedded"]
        env["HARKEN_MQTT__EMBEDDED_PORT"] = str(port)
    proc = subprocess.Popen(
        [str(HARKEN), "run", "--input", str(long_sample), "--captions-model", str(tiny_model),
         "--device-type", "cpu", "--out", str(out), "--format", "srt,jsonl,txt", *broker],
        stdin=terminal.slave, stdout=terminal.slave, stderr=terminal.slave, env=env, cwd=ROOT,
        preexec_fn=terminal.child_setup(ignore_hangup=True))
    jsonl, srt = out / "long.jsonl", out / "long.srt"
    try:
        deadline = time.monotonic() + SPEECH_TIMEOUT_S
        # Speech has started (on disk: files are written as the run goes) and is still
        # open when the run is stopped: its final must not be lost.
        while not (jsonl.exists() and "speech_started" in jsonl.read_text()):
            assert proc.poll() is None, f"harken exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "no speech heard within the time allowed"
            wait(0.1)
        if how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
        else:
            terminal.close()  # the terminal window goes; the hangup it sends is ignored
        stopped = time.monotonic()
        while proc.poll() is None and time.monotonic() - stopped < EXIT_TIMEOUT_S:
            wait(0.1)
        took = time.monotonic() - stopped
        assert proc.poll() is not None, f"harken still runs {took:.0f} s after {how}"
        terminal.drain(0.5)  # the last words, after the app has left the screen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    signum = signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGHUP
    assert proc.returncode == 128 + signum, f"exit status {proc.returncode}"
    if how == "SIGTERM":
        assert b"harken: stopped; outputs were flushed and closed." in terminal.seen
        assert b"Traceback" not in terminal.seen
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    finals = [e for e in events if e["type"] == "caption_final"]
    assert finals
    assert max(e["end"] for e in finals) < 34, f"it did not stop early ({took:.1f} s)"
    # The speech heard when the run was stopped was finished, not dropped.
    started = [e["segment"] for e in events if e["type"] == "speech_started"]
    assert started == [f["segment"] for f in finals]
    said = [f["text"].strip() for f in finals if f["text"].strip()]
    assert (out / "long.txt").read_text().splitlines() == said  # every final, complete
    assert srt.read_text().count(" --> ") >= len(said)
    if broker:  # the embedded mosquitto went with the run: nothing listens on its port
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
