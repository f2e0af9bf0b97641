"""`harken eval vad AUDIO RTTM` (app/eval/vad.py) and the RTTM reader (app/eval/rttm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_gen import HAVE_ESPEAK, SR, espeak, silence, tone, trim

from harken.app.cli import main
from harken.app.eval.rttm import RttmError, Turn, read_rttm, recording_turns
from harken.app.eval.vad import VadRun, array_blocks, detection_figures, run_vad
from harken.engine.vad import VadOptions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "audio" / "diarization"
LINE = "SPEAKER {uri} 1 {start} {dur} <NA> <NA> {spk} <NA> <NA>\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------- RTTM


def test_rttm_turns_are_read_per_recording(tmp_path: Path) -> None:
    rttm = write(tmp_path / "r.rttm",
                 ";; a comment\n"
                 + LINE.format(uri="a", start="1.5", dur="2.0", spk="S1")
                 + "SPKR-INFO a 1 <NA> <NA> <NA> unknown S1 <NA> <NA>\n\n"
                 + LINE.format(uri="b", start="0", dur="0.25", spk="S2")
                 + "SPEAKER a 1 4 1 <NA> <NA> S2\n")  # the last two fields are optional
    turns = read_rttm(rttm)
    assert turns["a"] == [Turn(uri="a", start=1.5, end=3.5, speaker="S1"),
                          Turn(uri="a", start=4.0, end=5.0, speaker="S2")]
    assert turns["b"] == [Turn(uri="b", start=0.0, end=0.25, speaker="S2")]
    assert recording_turns(rttm, "b") == turns["b"]
    with pytest.raises(RttmError, match="describes a, b, none named 'c'"):
        recording_turns(rttm, "c")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("SPEAKER a 1 0.5\n", r"r\.rttm:1 has 4 fields"),
        (LINE.format(uri="a", start="0", dur="1", spk="x") + LINE.format(
            uri="a", start="soon", dur="1", spk="x"), r"r\.rttm:2: start 'soon'"),
        (LINE.format(uri="a", start="1", dur="-2", spk="x"), "not negative"),
        (LINE.format(uri="a", start="nan", dur="1", spk="x"), "finite"),
        ("start,end,speaker\n0.0,1.0,A\n", r"r\.rttm:1 is not an RTTM line"),
        (";; nothing but a comment\n", "no SPEAKER lines"),
    ],
)
def test_rttm_errors_name_the_line_and_the_format(tmp_path: Path, text: str, match: str) -> None:
    rttm = write(tmp_path / "r.rttm", text)
    with pytest.raises(RttmError, match=match):
        recording_turns(rttm, "a")


def test_unreadable_rttm_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(RttmError, match="cannot read the RTTM"):
        read_rttm(tmp_path / "missing.rttm")
    binary = tmp_path / "audio.rttm"
    binary.write_bytes(b"RIFF\xff\xfe\x00\x80WAVEfmt ")
    with pytest.raises(RttmError, match="not a text file"):
        read_rttm(binary)


# ------------------------------------------------------------------------------ scoring


def test_detection_figures_follow_the_reference() -> None:
    turns = [Turn(uri="a", start=1.0, end=3.0, speaker="x"),
             Turn(uri="a", start=2.5, end=4.0, speaker="y")]  # overlap: 3 s of speech
    n = 10 * SR

    def figures(spans: list[tuple[int, int]]) -> dict[str, float]:
        return detection_figures(VadRun(spans=spans, samples=n, cpu_s=0.5), turns, collar=0.0)

    exact = figures([(1 * SR, 4 * SR)])
    assert (exact["miss"], exact["false_alarm"], exact["detection_error_rate"]) == (0, 0, 0)
    assert exact["reference_speech_s"] == pytest.approx(3.0)
    nothing = figures([])
    assert (nothing["miss"], nothing["false_alarm"], nothing["segments"]) == (1.0, 0.0, 0)
    everything = figures([(0, n)])
    assert everything["false_alarm"] == pytest.approx(7.0 / 3.0, abs=1e-4)
    half = figures([(2 * SR, 3 * SR), (5 * SR, 6 * SR)])  # 1 s hit, 2 s missed, 1 s extra
    assert half["miss"] == pytest.approx(2 / 3, abs=1e-4)
    assert half["false_alarm"] == pytest.approx(1 / 3, abs=1e-4)
    assert half["detection_error_rate"] == pytest.approx(1.0, abs=1e-4)
    assert (half["segments"], half["mean_segment_s"]) == (2, 1.0)
    assert half["vad_cpu_s_per_hour"] == pytest.approx(0.5 / 10 * 3600, abs=0.1)
    collared = detection_figures(VadRun(spans=[(SR + SR // 10, 4 * SR)], samples=n, cpu_s=0),
                                 turns, collar=0.25)
    assert collared["miss"] == 0.0  # 0.1 s late, inside the +-0.125 s collar


def test_audio_and_rttm_of_different_lengths_are_refused() -> None:
    turns = [Turn(uri="a", start=20.0, end=42.0, speaker="x")]
    with pytest.raises(RttmError, match=r"run to 42\.0 s but the audio lasts 30\.0 s"):
        detection_figures(VadRun(spans=[], samples=30 * SR, cpu_s=0), turns, collar=0.0)


def test_a_reference_without_speech_is_refused() -> None:
    turns = [Turn(uri="a", start=2.0, end=2.0, speaker="x")]
    with pytest.raises(RttmError, match="no speech"):
        detection_figures(VadRun(spans=[], samples=30 * SR, cpu_s=0), turns, collar=0.0)


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A WAV of two espeak sentences between silences, and its exact RTTM."""
    if not HAVE_ESPEAK:
        pytest.skip("espeak-ng is not installed")
    work = tmp_path_factory.mktemp("eval_vad")
    a = trim(espeak("Please turn off the lights in the kitchen.", work, name="a"))
    b = trim(espeak("We will meet at the station at seven.", work, name="b"))
    x = np.concatenate([silence(1.0), a, silence(2.0), b, silence(1.0)])
    wav = work / "talk.wav"
    sf.write(wav, x, SR)
    on_b = 1.0 + a.size / SR + 2.0
    rttm = write(work / "talk.rttm",
                 LINE.format(uri="talk", start="1.000", dur=f"{a.size / SR:.3f}", spk="A")
                 + LINE.format(uri="talk", start=f"{on_b:.3f}", dur=f"{b.size / SR:.3f}",
                               spk="B"))
    return wav, rttm


def test_eval_vad_prints_json_figures(capsys: pytest.CaptureFixture[str],
                                      spoken: tuple[Path, Path]) -> None:
    wav, rttm = spoken
    code, out, err = run_main(capsys, "eval", "vad", wav, rttm, "--engine", "both", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["engine"] == "both"
    assert result["segments"] == 2
    assert result["miss"] < 0.05  # espeak's extent, as trimmed, is all found
    # what is left is the pre-roll and the hangover (plus silero's release) around each one
    assert 0 < result["false_alarm"] < 0.5
    assert result["detection_error_rate"] == pytest.approx(
        result["miss"] + result["false_alarm"], abs=2e-4)
    code, out, _ = run_main(capsys, "eval", "vad", wav, rttm, "--engine", "webrtc")
    assert code == 0
    assert "VAD engine webrtc" in out
    assert "detection error" in out


def test_eval_vad_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    wav = tmp_path / "beep.wav"
    sf.write(wav, tone(3.0, 1000, 0.1), SR)
    cases = {
        write(tmp_path / "bad.rttm", "this is not rttm\n"): "is not an RTTM line",
        write(tmp_path / "long.rttm", LINE.format(uri="beep", start="1", dur="60", spk="A")):
            "not the same recording",
        write(tmp_path / "empty.rttm", LINE.format(uri="beep", start="1", dur="0", spk="A")):
            "no speech",
        tmp_path / "missing.rttm": "cannot read the RTTM",
    }
    for rttm, message in cases.items():
        code, out, err = run_main(capsys, "eval", "vad", wav, rttm, "--engine", "webrtc")
        assert code == 2
        assert out == ""
        assert len(err.strip().splitlines()) == 1
        assert message in err
    code, _, err = run_main(capsys, "eval", "vad", tmp_path / "none.wav",
                            write(tmp_path / "ok.rttm", LINE.format(uri="none", start="0",
                                                                    dur="1", spk="A")))
    assert code == 2
    assert "audio file not found" in err


# ----------------------------------------------------------------------- real recordings


@pytest.mark.skipif(not SHARED.is_dir(),
                    reason="../shared/audio/diarization (real speech with RTTM) is absent")
@pytest.mark.parametrize(("clip", "audio", "rttm"), [
    ("pyannote_sample", "sample.wav", "sample.rttm"),
    ("ami_dev00", "dev00.flac", "dev00.rttm"),
])
def test_two_stage_vad_meets_the_targets_on_real_speech(clip: str, audio: str,
                                                        rttm: str) -> None:
    # Issue 11's targets: `both` within 0.03 of the better single engine, and a -20 dBFS
    # 1 kHz tone under the whole clip raises its false alarm by less than 0.05.
    x, rate = sf.read(str(SHARED / clip / audio), dtype="float32")
    assert rate == SR
    turns = recording_turns(SHARED / clip / rttm, Path(audio).stem)
    with_tone = np.clip(x + tone(x.size / SR, 1000, 0.1), -1, 1)

    def score(engine: str, samples: np.ndarray) -> dict[str, float]:
        run = run_vad(array_blocks(samples), VadOptions(engine=engine))  # type: ignore[arg-type]
        return detection_figures(run, turns, collar=0.0)

    der = {e: score(e, x)["detection_error_rate"] for e in ("webrtc", "silero")}
    both = score("both", x)
    assert both["detection_error_rate"] <= min(der.values()) + 0.03
    assert score("both", with_tone)["false_alarm"] - both["false_alarm"] < 0.05


def test_eval_vad_loads_no_model_stack() -> None:
    import subprocess
    import sys

    probe = ("import sys, harken.app.commands.eval, harken.app.eval.vad\n"
             "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]
