"""Ctrl-C during a live run: the process stops cleanly and every output file is complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_models import build_tiny_ctc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(("signum", "code", "times"), [
    (signal.SIGINT, 130, 1), (signal.SIGTERM, 143, 1), (signal.SIGHUP, 129, 1),
    # A closing terminal often hangs up twice: the second stops at once, flushed (130), or,
    # when the first stop has already finished, it is ignored (129).
    (signal.SIGHUP, (129, 130), 2),
])
def test_a_stop_signal_flushes_and_closes_outputs(long_sample: Path, tmp_path: Path,
                                                  signum: int, code: int | tuple[int, ...],
                                                  times: int) -> None:
    """Ctrl-C, SIGTERM as systemd sends it to a daemon, or SIGHUP when the terminal closes;
    with SIGTERM and SIGHUP the run also has an embedded broker (in a process group of its
    own), which must stop with it (a stray one would hold the port)."""
    model = build_tiny_ctc("hubert", tmp_path / "model")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update(HF_HUB_OFFLINE="1", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    broker: list[str] = []
    port = free_port()
    if signum in (signal.SIGTERM, signal.SIGHUP) and shutil.which("mosquitto"):
        broker = ["--mqtt", "embedded"]
        env["HARKEN_MQTT__EMBEDDED_PORT"] = str(port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harken.app.cli", "run", "--input", str(long_sample),
         "--captions-model", str(model), "--device-type", "cpu", "--out", str(out),
         "--format", "srt,jsonl,txt", "--no-tui", *broker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    srt = out / "long.srt"
    deadline = time.monotonic() + 120
    try:
        # Wait for the first final caption on disk: it proves files are flushed as we go.
        while time.monotonic() < deadline and not (srt.exists() and srt.read_text().strip()):
            if proc.poll() is not None:
                pytest.fail(f"harken exited early: {proc.communicate()}")
            time.sleep(0.2)
        assert srt.read_text().strip(), "no final caption was written within 120 s"
        for _ in range(times):
            proc.send_signal(signum)
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (code if isinstance(code, tuple) else (code,)), stderr
    assert "Traceback" not in stderr
    assert "stopped" in stderr
    lines = (out / "long.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line complete, none cut
    finals = [e for e in events if e["type"] == "caption_final"]
    assert finals
    assert max(e["end"] for e in finals) < 34  # it really stopped before the end
    # The speech heard when the signal came was finished, not dropped: every segment that
    # started has its final.
    started = [e["segment"] for e in events if e["type"] == "speech_started"]
    assert started == [f["segment"] for f in finals]
    assert "finishing the speech already heard" in stderr
    assert srt.read_text().count(" --> ") >= 1
    assert stdout.count("→") >= len([f for f in finals if f["text"]])
    if broker:  # the embedded mosquitto went with the run: nothing listens on its port
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0


def test_ctrl_c_in_transcribe_finishes_the_open_segment(tmp_path: Path) -> None:
    """transcribe runs unpaced; Ctrl-C ends the file where it was read to and finishes its
    open segment (its final in every file), like `harken run`."""
    audio, rate = sf.read(str(ROOT / "assets" / "sample.wav"), dtype="float32")
    long = tmp_path / "talk.wav"
    sf.write(str(long), np.tile(audio, 120), rate)  # ~17 min: minutes of work unpaced
    model = build_tiny_ctc("hubert", tmp_path / "model")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update(HF_HUB_OFFLINE="1", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "harken.app.cli", "transcribe", str(long),
         "--captions-model", str(model), "--device-type", "cpu", "--out", str(out),
         "--format", "srt,jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    jsonl = out / "talk.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and not (
                jsonl.exists() and '"caption_final"' in jsonl.read_text()):
            if proc.poll() is not None:
                pytest.fail(f"harken exited early: {proc.communicate()}")
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    finals = [e for e in events if e["type"] == "caption_final"]
    assert max(e["end"] for e in finals) < 0.9 * len(audio) * 120 / rate  # it stopped early
    started = [e["segment"] for e in events if e["type"] == "speech_started"]
    assert started == [f["segment"] for f in finals]  # the open one was finished
    assert (out / "talk.srt").read_text().count(" --> ") == len([f for f in finals if f["text"]])
