"""End to end through the real CLI: the sample in assets/, a tiny random CTC model on disk."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_models import build_tiny_ctc

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "assets" / "sample.wav"
SAMPLE_S = sf.info(str(SAMPLE)).duration


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ctc("hubert", tmp_path_factory.mktemp("models") / "hubert")


def harken(*args: str | Path, check: bool = True, timeout: float = 240,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    full_env.update({"HF_HUB_OFFLINE": "1", "XDG_CONFIG_HOME": "/nonexistent", **(env or {})})
    proc = subprocess.run([sys.executable, "-m", "harken.app.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"harken {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


SRT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})$")


def srt_spans(text: str) -> list[tuple[float, float]]:
    spans = []
    for line in text.splitlines():
        m = SRT_TIME.match(line)
        if m:
            g = [int(x) for x in m.groups()]
            spans.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000,
                          g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000))
    return spans


@pytest.fixture(scope="module")
def transcribed(tiny_hubert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    harken("transcribe", SAMPLE, "--out", out, "--format", "srt,vtt,jsonl,txt",
           "--captions-model", tiny_hubert, "--device-type", "cpu", "--no-progress")
    return out


def test_transcribe_writes_valid_files(transcribed: Path) -> None:
    events = [json.loads(x) for x in (transcribed / "sample.jsonl").read_text().splitlines()]
    types = [e["type"] for e in events]
    # The sample has two sentences with a pause: the VAD finds (at least) two segments.
    assert types.count("speech_started") == types.count("speech_ended") >= 2
    finals = [e for e in events if e["type"] == "caption_final"]
    assert len(finals) == types.count("speech_ended")
    starts = [e["start"] for e in finals]
    assert starts == sorted(starts)
    for e in finals:
        assert 0 <= e["start"] < e["end"] <= SAMPLE_S + 1e-6
        assert set(e) >= {"stream", "start", "end", "wall_time", "text", "segment", "words",
                          "model", "speaker"}
        for w in e["words"]:
            assert e["start"] - 1e-6 <= w["start"] <= w["end"] <= e["end"] + 1e-6
    assert events[-1]["type"] == "stats"

    spans = srt_spans((transcribed / "sample.srt").read_text())
    if any(f["text"].strip() for f in finals):
        assert spans, "finals with text must give SRT cues"
    assert all(0 <= a <= b <= SAMPLE_S + 1e-3 for a, b in spans)
    assert all(b1 <= a2 + 1e-3 for (_, b1), (a2, _) in itertools.pairwise(spans))
    vtt = (transcribed / "sample.vtt").read_text()
    assert vtt.startswith("WEBVTT\n")
    txt = (transcribed / "sample.txt").read_text().splitlines()
    assert txt == [f["text"].strip() for f in finals if f["text"].strip()]


def test_live_fast_run_equals_offline(tiny_hubert: Path, transcribed: Path) -> None:
    proc = harken("run", "--input", SAMPLE, "--fast", "--jsonl", "--captions-model", tiny_hubert,
                  "--device-type", "cpu")
    live = [json.loads(x) for x in proc.stdout.splitlines()]
    offline = [json.loads(x) for x in (transcribed / "sample.jsonl").read_text().splitlines()]

    def finals(events: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return [(e["segment"], e["start"], e["end"], e["text"], json.dumps(e["words"]))
                for e in events if e["type"] == "caption_final"]

    assert finals(live)
    assert finals(live) == finals(offline)
    assert any(e["type"] == "caption_partial" for e in live)
    partial_ends = [e["end"] for e in live if e["type"] == "caption_partial"]
    assert all(0 < t <= SAMPLE_S + 1e-6 for t in partial_ends)


def test_printer_prints_finals_on_a_pipe(tiny_hubert: Path) -> None:
    proc = harken("run", "--input", SAMPLE, "--fast", "--captions-model", tiny_hubert,
                  "--device-type", "cpu")
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    assert lines
    assert all(x.startswith("[") and "→" in x for x in lines)
    assert "\x1b[" not in proc.stdout  # no in-place redraws on a pipe


@pytest.mark.parametrize(("make", "needle"), [
    (lambda d: d / "missing.wav", "not found"),
    (lambda d: d, "directory"),
    (lambda d: (d / "empty.wav").write_bytes(b"") or d / "empty.wav", "empty"),
    (lambda d: (d / "notes.wav").write_text("not audio at all") or d / "notes.wav", "audio"),
])
def test_bad_input_is_a_clear_error(tiny_hubert: Path, tmp_path: Path, make: object,
                                    needle: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    proc = harken("transcribe", path, "--out", tmp_path / "o", "--captions-model", tiny_hubert,
                  "--device-type", "cpu", "--no-progress", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("harken: error:")
    assert needle in proc.stderr.lower()


def test_odd_rates_and_stereo_transcribe(tiny_hubert: Path, tmp_path: Path) -> None:
    mono, rate = sf.read(str(SAMPLE), dtype="float32")
    import soxr

    for name, target, channels in (("eight", 8000, 1), ("stereo48", 48000, 2)):
        x = soxr.resample(mono, rate, target).astype(np.float32)
        data = np.stack([x] * channels, axis=1) if channels > 1 else x
        sf.write(str(tmp_path / f"{name}.wav"), data, target, subtype="PCM_16")
    harken("transcribe", tmp_path / "eight.wav", tmp_path / "stereo48.wav", "--out",
           tmp_path / "o", "--format", "jsonl", "--captions-model", tiny_hubert,
           "--device-type", "cpu", "--no-progress")
    for name in ("eight", "stereo48"):
        events = [json.loads(x) for x in (tmp_path / "o" / f"{name}.jsonl").read_text()
                  .splitlines()]
        finals = [e for e in events if e["type"] == "caption_final"]
        assert len(finals) >= 2
        assert all(e["end"] <= SAMPLE_S + 0.05 for e in finals)


def test_unknown_model_id_offline(tmp_path: Path) -> None:
    proc = harken("transcribe", SAMPLE, "--out", tmp_path, "--captions-model",
                  "nobody/no-such-model", "--no-progress", check=False)
    assert proc.returncode == 2
    assert "nobody/no-such-model" in proc.stderr
    assert "offline" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


def test_bad_config_value(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[captions]\nhop_s = 'often'\n")
    proc = harken("config", "show", "--config", cfg, check=False)
    assert proc.returncode == 2
    assert "captions.hop_s" in proc.stderr
    assert str(cfg) in proc.stderr


def test_config_show_origins(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[captions]\nhop_s = 0.25\n")
    proc = harken("config", "show", "--config", cfg, "--left-context", "3", "--json",
                  env={"HARKEN_VAD__HANGOVER_S": "0.8"})
    shown = json.loads(proc.stdout)
    assert shown["captions.hop_s"] == {"value": 0.25, "from": f"file {cfg}"}
    assert shown["captions.left_context_s"] == {"value": 3.0, "from": "flag --left-context"}
    assert shown["vad.hangover_s"]["from"] == "env HARKEN_VAD__HANGOVER_S"


def test_mic_without_device_is_a_clear_error(tiny_hubert: Path) -> None:
    proc = harken("run", "--captions-model", tiny_hubert, "--device-type", "cpu", check=False,
                  timeout=60)
    # This machine has no sound card: either no device, or no PortAudio at all.
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--input" in proc.stderr or "device" in proc.stderr.lower()


def test_run_writes_files_where_a_config_file_says(tiny_hubert: Path, tmp_path: Path) -> None:
    """output.dir set in a config file (or HARKEN_OUTPUT__DIR) is a folder named by the
    user, like --out; left at its default, `harken run` writes no files."""
    out = tmp_path / "from-config"
    config = tmp_path / "harken.toml"
    config.write_text(f'[output]\ndir = "{out}"\nformats = ["srt", "txt"]\n')
    harken("run", "--input", SAMPLE, "--fast", "--jsonl", "--captions-model", tiny_hubert,
           "--device-type", "cpu", "--config", config)
    assert sorted(p.name for p in out.iterdir()) == ["sample.srt", "sample.txt"]
    assert srt_spans((out / "sample.srt").read_text())
    cwd_before = sorted(ROOT.iterdir())
    harken("run", "--input", SAMPLE, "--fast", "--jsonl", "--captions-model", tiny_hubert,
           "--device-type", "cpu")
    assert sorted(ROOT.iterdir()) == cwd_before  # nothing written beside the project
