"""Who is speaking, end to end: tiny random UniSpeech-SAT checkpoints on disk, espeak voices.

Random weights cannot tell voices apart, so these tests check what must hold whatever the
weights: the real loading path, the events and files a user gets, their consistency with
each other (RTTM read back by pyannote equals the turns), enrollment, verification and the
evaluation commands on real and generated audio.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from audio_gen import HAVE_ESPEAK
from tiny_speaker_models import build_tiny_segmenter, build_tiny_xvector, espeak_voice

from harken.app.cli import main
from harken.engine.sinks.rttm import rttm_line
from harken.models.audio import SAMPLE_RATE

pytestmark = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not installed")
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "audio"
PAUSE_S = 1.0
LINES = [
    ("en-us", "Good morning everyone, thank you for coming to the meeting today."),
    ("en-gb+f3", "Thanks. I would like to start with the budget, which is over by ten percent."),
    ("en-us", "That is a concern. Let us look at the numbers together after lunch."),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory,
           tiny_ctc_dirs: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sv": build_tiny_xvector(root / "sv"), "sd": build_tiny_segmenter(root / "sd"),
            "sv2": build_tiny_xvector(root / "sv2"), "ctc": tiny_ctc_dirs["hubert"]}


@pytest.fixture(scope="module")
def meeting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A three-turn exchange of two espeak voices, its reference RTTM and single clips."""
    folder = tmp_path_factory.mktemp("meeting")
    pause = np.zeros(round(PAUSE_S * SAMPLE_RATE), np.float32)
    parts, reference, t = [pause], [], PAUSE_S
    for i, (voice, text) in enumerate(LINES):
        audio = espeak_voice(text, voice, folder, f"line{i}")
        reference.append(rttm_line(uri="meeting", start=t, end=t + len(audio) / SAMPLE_RATE,
                                   speaker=voice))
        parts += [audio, pause]
        t += len(audio) / SAMPLE_RATE + PAUSE_S
    sf.write(str(folder / "meeting.wav"), np.concatenate(parts), SAMPLE_RATE)
    (folder / "meeting.rttm").write_text("".join(reference))
    clips = {}
    for name, voice, text in (("ann1", "en-us", "The quick brown fox jumps over the lazy dog."),
                              ("ann2", "en-us", "She sells sea shells by the sea shore today."),
                              ("bob1", "en-gb+f3", "Peter Piper picked a peck of pickled peppers."),
                              ("bob2", "en-gb+f3", "How much wood would a woodchuck chuck here.")):
        clips[name] = folder / f"{name}.wav"
        sf.write(str(clips[name]), espeak_voice(text, voice, folder, name), SAMPLE_RATE)
    clips["silence"] = folder / "silence.wav"
    sf.write(str(clips["silence"]), np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    return {"wav": folder / "meeting.wav", "rttm": folder / "meeting.rttm", "clips": clips,
            "duration": t}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("HARKEN_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))  # never the user's store


def run_main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_transcribe_diarize_gives_turns_speakers_and_an_rttm_pyannote_reads(
        models: dict[str, Path], meeting: dict[str, Any], tmp_path: Path) -> None:
    from pyannote.database.util import load_rttm

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update({"HF_HUB_OFFLINE": "1", "HARKEN_SPEAKERS__STORE": str(tmp_path / "vp.sqlite")})
    proc = subprocess.run(
        [sys.executable, "-m", "harken.app.cli", "transcribe", str(meeting["wav"]), "--diarize",
         "--speaker-model", str(models["sv"]), "--diarization-model", str(models["sd"]),
         "--captions-model", str(models["ctc"]), "--device-type", "cpu", "--no-progress",
         "--out", str(out), "--format", "jsonl,rttm,txt,srt"],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in (out / "meeting.jsonl").read_text().splitlines()]
    turns = [e for e in events if e["type"] == "speaker_turn"]
    finals = [e for e in events if e["type"] == "caption_final"]
    speech = [(e["start"], e["end"]) for e in events if e["type"] == "speech_ended"]
    assert turns
    assert len(finals) == len(speech) >= 3
    labels = {t["speaker"] for t in turns}
    assert all(re.fullmatch(r"S\d+", label) for label in labels)
    for t in turns:
        assert set(t) >= {"stream", "start", "end", "speaker", "score", "enrolled", "wall_time"}
        assert 0 <= t["start"] < t["end"] <= meeting["duration"] + 1e-6
        assert 0 < t["score"] <= 1
        assert not t["enrolled"]
        # Only VAD speech is analysed: every turn lies inside a speech segment.
        assert any(s - 1e-6 <= t["start"] and t["end"] <= e + 1e-6 for s, e in speech), t
    for f in finals:
        assert f["speaker"] in labels
        assert any(t["speaker"] == f["speaker"] and t["start"] < f["end"]
                   and t["end"] > f["start"] for t in turns)
    # The RTTM is the same turns, as pyannote reads them.
    annotation = load_rttm(str(out / "meeting.rttm"))["meeting"]
    got = sorted((round(s.start, 3), round(s.end, 3), label)
                 for s, _, label in annotation.itertracks(yield_label=True))
    want = sorted((round(t["start"], 3), round(t["end"], 3), t["speaker"]) for t in turns)
    assert len(got) == len(want)
    for (gs, ge, gl), (ws, we, wl) in zip(got, want, strict=True):
        assert gl == wl
        assert abs(gs - ws) <= 1e-3
        assert abs(ge - we) <= 2e-3
    # Who said what: transcript lines and subtitle cues carry the speaker.
    txt = (out / "meeting.txt").read_text().splitlines()
    assert txt
    assert all(line.split(": ", 1)[0] in labels for line in txt)
    cues = [b.splitlines()[2] for b in (out / "meeting.srt").read_text().split("\n\n") if b]
    assert cues
    assert all(c.split(":", 1)[0] in labels for c in cues)


def test_rttm_without_diarize_fails_before_loading_models(
        capsys: pytest.CaptureFixture[str], meeting: dict[str, Any], tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "transcribe", meeting["wav"], "--format", "rttm",
                            "--captions-model", tmp_path / "not-there", "--out", tmp_path)
    assert code == 2
    assert "--diarize" in err


def test_enroll_list_verify_remove(capsys: pytest.CaptureFixture[str], models: dict[str, Path],
                                   meeting: dict[str, Any], tmp_path: Path) -> None:
    clips = meeting["clips"]
    base = ["--speaker-model", models["sv"], "--device-type", "cpu",
            "--speaker-store", tmp_path / "vp.sqlite"]
    code, _, err = run_main(capsys, "speakers", "enroll", "Ann", clips["silence"], *base)
    assert code == 2
    assert "no speech" in err
    assert not (tmp_path / "vp.sqlite").exists()  # refused before anything was stored
    code, out, _ = run_main(capsys, "speakers", "enroll", "Ann", clips["ann1"], *base)
    assert code == 0
    assert out.startswith("created Ann: 1 clip(s)")
    code, out, _ = run_main(capsys, "speakers", "list", *base)
    assert "Ann" in out
    assert str(models["sv"].resolve()) in out
    code, out, _ = run_main(capsys, "speakers", "verify", "Ann", clips["ann2"], *base)
    m = re.fullmatch(r"Ann: score (-?[\d.]+), threshold 0\.7000 -> (.*)\n", out)
    assert m, out
    accepted = float(m.group(1)) >= 0.7
    assert code == (0 if accepted else 1)
    assert m.group(2) == ("same speaker (accept)" if accepted else "different speaker (reject)")
    assert run_main(capsys, "speakers", "verify", "Ann", clips["bob1"], *base,
                    "--speaker-threshold", "-1")[0] == 0
    assert run_main(capsys, "speakers", "verify", "Ann", clips["bob1"], *base,
                    "--speaker-threshold", "1")[0] == 1
    code, _, err = run_main(capsys, "speakers", "verify", "Ann", clips["ann2"],
                            "--speaker-model", models["sv2"], "--device-type", "cpu",
                            "--speaker-store", tmp_path / "vp.sqlite")
    assert code == 2
    assert "enroll" in err
    assert str(models["sv"].resolve()) in err
    assert run_main(capsys, "speakers", "remove", "Ann", *base)[0] == 0
    _, _, err = run_main(capsys, "speakers", "list", *base)
    assert "nobody is enrolled" in err


def test_an_enrolled_voice_is_named_in_a_run(capsys: pytest.CaptureFixture[str],
                                            models: dict[str, Path], meeting: dict[str, Any],
                                            tmp_path: Path) -> None:
    store = tmp_path / "vp.sqlite"
    speaker = ["--speaker-model", models["sv"], "--device-type", "cpu", "--speaker-store", store]
    assert run_main(capsys, "speakers", "enroll", "Ann", meeting["clips"]["ann1"],
                    meeting["clips"]["ann2"], *speaker)[0] == 0
    code, _, err = run_main(capsys, "transcribe", meeting["wav"], "--diarize", *speaker,
                            "--diarization-model", models["sd"], "--captions-model",
                            models["ctc"], "--no-progress", "--out", tmp_path,
                            "--format", "jsonl")
    assert code == 0, err
    events = [json.loads(x) for x in (tmp_path / "meeting.jsonl").read_text().splitlines()]
    named = [e for e in events if e["type"] == "speaker_turn" and e["speaker"] == "Ann"]
    assert named
    assert all(e["enrolled"] for e in named)
    assert not any(e["enrolled"] for e in events
                   if e["type"] == "speaker_turn" and e["speaker"] != "Ann")


def test_enroll_a_voice_heard_in_a_recorded_session(capsys: pytest.CaptureFixture[str],
                                                   models: dict[str, Path],
                                                   meeting: dict[str, Any],
                                                   tmp_path: Path) -> None:
    # A --diarize run's JSONL names the second line's voice S2 (times from the reference).
    lines = meeting["rttm"].read_text().splitlines()
    start, duration = (float(x) for x in lines[1].split()[3:5])
    session = tmp_path / "session.jsonl"
    session.write_text(json.dumps({"type": "speaker_turn", "stream": "meeting", "start": start,
                                   "end": start + duration, "speaker": "S2", "score": 0.9,
                                   "enrolled": False}) + "\n")
    base = ["--speaker-model", models["sv"], "--device-type", "cpu",
            "--speaker-store", tmp_path / "vp.sqlite"]
    code, out, err = run_main(capsys, "speakers", "enroll", "Bob", meeting["wav"], "--from",
                              session, "--speaker", "S2", *base)
    assert code == 0, err
    spoken = float(re.search(r"([\d.]+) s of speech", out).group(1))  # type: ignore[union-attr]
    assert duration - 0.5 <= spoken <= duration + 0.1  # the turn's speech, VAD-trimmed
    code, _, err = run_main(capsys, "speakers", "enroll", "Bob", meeting["wav"], "--from",
                            session, "--speaker", "S9", *base)
    assert code == 2
    assert "S2" in err  # names the speakers the session has


def _der_json(capsys: pytest.CaptureFixture[str], models: dict[str, Path], audio: Path,
              rttm: Path, *extra: object) -> dict[str, Any]:
    code, out, err = run_main(capsys, "eval", "diarization", audio, rttm, "--speaker-model",
                              models["sv"], "--diarization-model", models["sd"],
                              "--device-type", "cpu", "--json", *extra)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    assert result["der"] == pytest.approx(
        result["missed"] + result["false_alarm"] + result["confusion"], abs=2e-4)
    assert all(result[k] >= 0 for k in ("missed", "false_alarm", "confusion"))
    assert result["turns"] > 0
    return result


def test_eval_diarization_scores_with_pyannote(capsys: pytest.CaptureFixture[str],
                                               models: dict[str, Path], meeting: dict[str, Any],
                                               tmp_path: Path) -> None:
    hyp = tmp_path / "hyp.rttm"
    result = _der_json(capsys, models, meeting["wav"], meeting["rttm"], "--collar", "0.25",
                       "--out-rttm", hyp)
    assert result["collar_s"] == 0.25
    assert result["speakers_reference"] == 2
    # pyannote leaves collar/2 unscored on each side of the 6 reference boundaries.
    speech_s = meeting["duration"] - 4 * PAUSE_S
    assert result["reference_speech_s"] == pytest.approx(speech_s - 6 * 0.125, abs=0.01)
    # A second run scored against the first run's RTTM: runs on files are deterministic and
    # the RTTM holds the turns faithfully (to its millisecond rounding).
    self_check = _der_json(capsys, models, meeting["wav"], hyp)
    assert self_check["turns"] == result["turns"]
    assert self_check["der"] < 0.005


@pytest.mark.skipif(not (SHARED / "diarization" / "pyannote_sample").is_dir(),
                    reason="../shared/audio is not available on this machine")
def test_eval_diarization_on_real_speech(capsys: pytest.CaptureFixture[str],
                                         models: dict[str, Path]) -> None:
    folder = SHARED / "diarization" / "pyannote_sample"
    result = _der_json(capsys, models, folder / "sample.wav", folder / "sample.rttm")
    assert result["speakers_reference"] == 2
    assert result["audio_s"] == pytest.approx(30.0, abs=0.1)


def test_eval_speakers_gives_an_eer(capsys: pytest.CaptureFixture[str],
                                    models: dict[str, Path], meeting: dict[str, Any],
                                    tmp_path: Path) -> None:
    for name in ("ann1", "ann2", "bob1", "bob2"):
        (tmp_path / name[:3]).mkdir(exist_ok=True)
        (tmp_path / name[:3] / f"{name}.wav").write_bytes(meeting["clips"][name].read_bytes())
    code, out, err = run_main(capsys, "eval", "speakers", tmp_path, "--speaker-model",
                              models["sv"], "--device-type", "cpu", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["speakers"], result["files"]) == (2, 4)
    assert (result["same_pairs"], result["different_pairs"]) == (2, 4)
    assert 0 <= result["eer"] <= 1
    assert -1 <= result["eer_threshold"] <= 1


def test_bench_speakers_reports_step_time_and_memory(capsys: pytest.CaptureFixture[str],
                                                     models: dict[str, Path],
                                                     meeting: dict[str, Any]) -> None:
    code, out, err = run_main(capsys, "bench", "speakers", "--architecture",
                              f"{models['sv']},{models['sd']}", "--minutes", "0.25",
                              "--audio", meeting["wav"], "--device-type", "cpu", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["audio_s"] == pytest.approx(15.0, abs=0.1)
    assert result["steps"] > 0
    assert 0 < result["step_compute_p50_s"] <= result["step_compute_p95_s"]
    assert result["step_s"] == 0.5
    assert result["rtf"] > 0
    assert result["rss_start_mb"] > 0
    assert result["rss_end_mb"] > 0


def test_speakers_config_defaults_and_validation() -> None:
    from harken.app.config import load_config
    from harken.app.tasks.speakers import diarization_options
    from harken.models.errors import ConfigError

    config = load_config().config
    assert (config.speakers.enabled, config.speakers.threshold) == (False, None)
    options = diarization_options(config)
    assert (options.window_s, options.step_s, options.latency_s) == (5.0, 0.5, 0.5)
    # Empty thresholds come from the table of known checkpoints (models/calibration.py).
    assert options.clustering.enrolled_threshold == 0.7
    assert options.clustering.delta_new == pytest.approx(0.3)
    assert options.clustering.retire_after == 3600  # 1800 s of speech in 0.5 s steps
    with pytest.raises(ConfigError, match="latency_s"):
        load_config(flags={"speakers": {"latency_s": 9.0}})
    with pytest.raises(ConfigError, match="delta_new"):
        load_config(flags={"speakers": {"delta_new": 0}})


# ---------------------------------------------------------------- harken tune


def _tune(capsys: pytest.CaptureFixture[str], models: dict[str, Path], config: Path,
          *args: object) -> tuple[int, str, str]:
    return run_main(capsys, "tune", *args, "--speaker-model", models["sv"],
                    "--device-type", "cpu", "--config", config)


def test_tune_diarization_writes_better_thresholds_under_each_model(
        capsys: pytest.CaptureFixture[str], models: dict[str, Path], meeting: dict[str, Any],
        tmp_path: Path) -> None:
    import tomllib

    from harken.app.config import load_config
    from harken.app.tasks.speakers import diarization_options
    from harken.app.tasks.thresholds import model_key

    config = tmp_path / "config.toml"
    config.write_text("# mine\n[speakers]\nmax_speakers = 5  # keep\n")
    code, out, err = _tune(capsys, models, config, "diarization", meeting["wav"],
                           meeting["rttm"], "--diarization-model", models["sd"],
                           "--trials", "4", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["trials"] == 4
    assert result["der_after"] <= result["der_before"]
    assert result["before"] == {"tau_active": 0.6, "rho_update": 0.3, "delta_new": 1.0}
    text = config.read_text()
    assert "max_speakers = 5  # keep" in text
    assert "# mine" in text
    tables = tomllib.loads(text)["speakers"]["calibration"]
    sd, sv = model_key(str(models["sd"])), model_key(str(models["sv"]))
    assert set(tables[sd]) == {"tau_active", "rho_update"}
    assert set(tables[sv]) == {"delta_new"}
    # The next run uses them, for these models only.
    loaded = load_config(config, flags={"speakers": {"model": sv, "diarization_model": sd}})
    options = diarization_options(loaded.config).clustering
    assert options.delta_new == pytest.approx(result["after"]["delta_new"], abs=1e-4)
    assert options.tau_active == pytest.approx(result["after"]["tau_active"], abs=1e-4)


def test_tune_speakers_writes_the_eer_threshold(capsys: pytest.CaptureFixture[str],
                                                models: dict[str, Path],
                                                meeting: dict[str, Any],
                                                tmp_path: Path) -> None:
    import tomllib

    from harken.app.tasks.thresholds import model_key

    voices = tmp_path / "voices"
    for name in ("ann1", "ann2", "bob1", "bob2"):
        (voices / name[:3]).mkdir(parents=True, exist_ok=True)
        (voices / name[:3] / f"{name}.wav").write_bytes(meeting["clips"][name].read_bytes())
    config = tmp_path / "config.toml"
    config.touch()
    code, out, err = _tune(capsys, models, config, "speakers", voices)
    assert code == 0, err
    assert "EER" in out
    assert "written to" in out
    written = tomllib.loads(config.read_text())["speakers"]["calibration"]
    threshold = written[model_key(str(models["sv"]))]["threshold"]
    code, out, _ = run_main(capsys, "eval", "speakers", voices, "--speaker-model",
                            models["sv"], "--device-type", "cpu", "--json")
    assert threshold == pytest.approx(json.loads(out)["eer_threshold"], abs=1e-4)
    # --no-write leaves the file as it is.
    before = config.read_text()
    code, out, _ = _tune(capsys, models, config, "speakers", voices, "--no-write")
    assert (code, config.read_text()) == (0, before)


@pytest.mark.parametrize("case", ["garbage", "longer", "odd", "silence", "empty", "bad_toml"])
def test_tune_refuses_bad_input_in_one_line(capsys: pytest.CaptureFixture[str],
                                            models: dict[str, Path], meeting: dict[str, Any],
                                            tmp_path: Path, case: str) -> None:
    rttm = tmp_path / "ref.rttm"
    audio = meeting["wav"]
    config = tmp_path / "config.toml"
    config.write_text("[speakers]\n")
    expect = {"garbage": "cannot read the reference", "longer": "pair each audio file",
              "odd": "AUDIO RTTM pairs", "silence": "no speech found",
              "empty": "no speech", "bad_toml": "not valid TOML"}[case]
    rttm.write_text(meeting["rttm"].read_text())
    paths: list[object] = [audio, rttm]
    if case == "garbage":
        rttm.write_text("SPEAKER meeting 1 zero one <NA> <NA> x <NA> <NA>\nhello\n")
    elif case == "longer":
        rttm.write_text(rttm_line(uri="meeting", start=1.0, end=meeting["duration"] + 60,
                                  speaker="x"))
    elif case == "odd":
        paths.append(audio)
    elif case == "silence":
        audio = meeting["clips"]["silence"]
        rttm.write_text(rttm_line(uri="silence", start=0.5, end=2.5, speaker="x"))
        paths = [audio, rttm]
    elif case == "empty":
        rttm.write_text(rttm_line(uri="meeting", start=1.0, end=1.0, speaker="x"))
    else:
        config.write_text("[speakers\n")
    before = config.read_text()
    code, _, err = _tune(capsys, models, config, "diarization", *paths,
                         "--diarization-model", models["sd"], "--trials", "2")
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("harken: error")]
    assert len(lines) == 1, err
    assert expect in lines[0], err
    assert "Traceback" not in err
    assert config.read_text() == before
