"""`harken eval captions`: the reference layouts it reads, and a whole run with tiny models
(streaming CTC, whole-segment CTC, refined and offline-refined text scored against the
references, latency when paced)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_models import build_tiny_ctc, speechlike_audio
from tiny_refine_models import build_tiny_whisper

from harken.app.config import HarkenConfig, RefineConfig
from harken.app.eval.captions import evaluate, find_utterances, print_report
from harken.app.session import thread_budget
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.errors import HarkenError
from harken.models.refine import RefineOptions, SpeechRefiner

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "audio" / "captions"


def clip(path: Path, seconds: float = 1.2, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    quiet = (1e-3 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
    audio = np.concatenate([quiet, speechlike_audio(seconds, seed=seed), quiet])
    sf.write(str(path), audio, SAMPLE_RATE)
    return path


def test_finds_the_three_layouts_and_manifests(tmp_path: Path) -> None:
    libri = tmp_path / "data" / "libri"
    clip(libri / "1-2-0000.flac")
    clip(libri / "1-2-0001.flac", seed=1)
    (libri / "1-2.trans.txt").write_text("1-2-0000 HELLO THERE\n1-2-0001 GOOD BYE\n")
    lj = tmp_path / "data" / "lj"
    clip(lj / "LJ001-0001.wav", seed=2)
    (lj / "metadata.csv").write_text("LJ001-0001|Dr. Smith, 1st|Doctor Smith, first\n")
    clip(tmp_path / "data" / "talk.wav", seed=3)
    (tmp_path / "data" / "talk.txt").write_text("Ask not.\n")
    (tmp_path / "data" / "notes.txt").write_text("no audio beside me")
    found = {u.path.name: u.reference for u in find_utterances(tmp_path / "data")}
    assert found == {"1-2-0000.flac": "HELLO THERE", "1-2-0001.flac": "GOOD BYE",
                     "LJ001-0001.wav": "Doctor Smith, first", "talk.wav": "Ask not."}
    manifest = tmp_path / "list.tsv"
    manifest.write_text("# audio\ttext\ndata/talk.wav\tAsk not what\n")
    [only] = find_utterances(manifest)
    assert (only.path.name, only.reference) == ("talk.wav", "Ask not what")
    manifest.write_text("data/talk.wav Ask not\n")
    with pytest.raises(HarkenError, match="AUDIO<TAB>REFERENCE"):
        find_utterances(manifest)
    with pytest.raises(HarkenError, match="no audio with a reference"):
        find_utterances(_empty(tmp_path))
    with pytest.raises(HarkenError, match="does not exist"):
        find_utterances(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/audio/captions is not here")
def test_reads_the_shared_layouts() -> None:
    found = find_utterances(SHARED)
    names = {u.path.parent.name for u in found}
    assert {"librispeech_test_clean_1089", "ljspeech", "fleurs_en"} <= names
    assert any(u.path.name == "jfk.wav" for u in found)
    assert all(u.reference for u in found)


async def test_a_whole_run_with_tiny_models(tmp_path: Path) -> None:
    folder = tmp_path / "audio"
    clip(folder / "a.wav", seed=4)
    (folder / "a.txt").write_text("hello there")
    captioner = CtcCaptioner.from_pretrained(str(build_tiny_ctc("hubert", tmp_path / "ctc")),
                                             device="cpu")
    refiner = SpeechRefiner.from_pretrained(str(build_tiny_whisper(tmp_path / "whisper")),
                                            device="cpu",
                                            options=RefineOptions(max_new_tokens=4))
    config = HarkenConfig(refine=RefineConfig(model="tiny", guard=False))
    result = await evaluate(config, folder, realtime=True, captioner=captioner,
                            refiner=refiner)
    assert set(result["systems"]) == {"ctc_streaming", "ctc_segment", "refined",
                                      "refine_offline"}
    for row in result["systems"].values():
        assert row["words"] == 2
        assert row["wer"] is not None
        assert row["wer"] >= 0
    [utt] = result["utterances"]
    assert utt["segments"] >= 1
    assert utt["refined"].strip()
    assert utt["refine_verdicts"] == ["ok"] * utt["segments"]
    latency = result["latency"]["refined_final"]
    assert latency["n"] == utt["segments"]
    assert latency["p95_s"] >= latency["p50_s"] > 0
    assert result["counters"]["refine_segments"] == utt["segments"]
    # The run's own thread budget (engine/threads.py), and the refine model's time on it.
    budget = thread_budget(config, device_type="cpu")
    assert result["threads"] == {"inference": budget.inference,
                                 "generation": budget.generation,
                                 "generation_nice": budget.generation_nice,
                                 "lend": budget.lend}
    assert result["generation"]["calls"] >= utt["segments"]
    assert result["generation"]["busy_s"] > 0
    json.dumps(result)  # the --json output
    lines: list[str] = []
    print_report(result, out=_Lines(lines))
    assert any("refined" in line and "WER" in line for line in lines)


class _Lines:
    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> None:
        self.into.extend(t for t in text.splitlines() if t)

    def flush(self) -> None:
        pass


def test_cli_errors_name_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harken.app.cli import main

    assert main(["eval", "captions", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    ctc = build_tiny_ctc("hubert", tmp_path / "ctc")
    audio = clip(tmp_path / "a.wav")
    code = main(["transcribe", str(audio), "--captions-model", str(ctc), "--refine-model",
                 str(ctc), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no AutoModelForSpeechSeq2Seq variant" in err
    assert "refine" in err
