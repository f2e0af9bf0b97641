"""`harken bench all` and `harken bench streams`: their JSON has its keys (tiny models, a few
seconds of paced audio; no figure is asserted, timing is the benchmarks' business)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from tiny_models import speechlike_audio
from tiny_speaker_models import build_tiny_segmenter, build_tiny_xvector
from tiny_task_models import build_tiny_keyword_model, build_tiny_translation_model

from harken.app.bench.all import bench_all, targets
from harken.app.bench.streams import bench_streams, find_capacity, missed_reasons, parse_tasks
from harken.app.cli import main
from harken.app.tasks.loader import ModelLoader
from harken.app.tasks.speakers import SpeakerModels
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.diarization import FrameSegmenter
from harken.models.errors import ConfigError
from harken.models.keywords import KeywordSpotter
from harken.models.speakers import XVectorEmbedder
from harken.models.translation import SpeechTranslator

SECONDS = 3.0


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    audio = speechlike_audio(SECONDS)
    audio[: SAMPLE_RATE // 4] = 0.0  # a pause first, so the VAD sees a segment start
    sf.write(str(path), audio, SAMPLE_RATE)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory,
         tiny_ctc_dirs: dict[str, Path]) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_bench")
    return {"captions": str(tiny_ctc_dirs["hubert"]),
            "keywords": str(build_tiny_keyword_model(root / "kw")),
            "translation": str(build_tiny_translation_model(root / "tr")),
            "sv": str(build_tiny_xvector(root / "sv")),
            "sd": str(build_tiny_segmenter(root / "sd"))}


def _models(tiny: dict[str, str], *, translation: bool) -> ModelLoader:
    """Tiny checkpoints through the real loading code (int8 on CPU, the default)."""
    speakers = SpeakerModels(
        segmenter=FrameSegmenter.from_pretrained(tiny["sd"], device="cpu"),
        embedder=XVectorEmbedder.from_pretrained(tiny["sv"], device="cpu"))
    return ModelLoader(
        captioner=CtcCaptioner.from_pretrained(tiny["captions"], device="cpu"),
        spotter=KeywordSpotter.from_pretrained(tiny["keywords"], device="cpu"),
        translator=SpeechTranslator.from_pretrained(tiny["translation"], device="cpu")
        if translation else None,
        speakers=speakers)


def test_bench_all_reports_every_task(speech: Path, tiny: dict[str, str]) -> None:
    out = bench_all(seconds=SECONDS, audio=speech, device_type="cpu", dtype="auto",
                    precision="auto", max_new_tokens=4, models=_models(tiny, translation=True))
    json.dumps(out)
    assert out["precision"] == "int8"
    assert set(out["tasks"]) == {"captions", "speakers", "keywords", "translation"}
    captions = out["tasks"]["captions"]
    assert {"rtf", "final_latency_p95_s", "final_ready_latency_p95_s",
            "split_final_latency_p95_s", "partial_latency_p95_s", "steps_merged"} <= set(captions)
    # Every segment's final is counted once: after a pause or after a split.
    assert captions["finals"] + captions["split_finals"] >= 1
    assert {"rtf", "turn_latency_p95_s", "steps_widened", "steps_skipped",
            "steps_superseded"} <= set(out["tasks"]["speakers"])
    assert {"rtf", "latency_p95_s", "windows_skipped"} <= set(out["tasks"]["keywords"])
    assert {"rtf", "latency_p95_s", "latency_per_audio_s_p95", "segments_skipped"} <= set(
        out["tasks"]["translation"])
    assert {"cpu_share", "rss_max_mb", "threads", "worker"} <= set(out)
    checks = out["targets"]["checks"]
    assert set(checks) == {"caption_final_p95_s", "caption_steps_merged", "keyword_p95_s",
                           "keyword_windows_skipped", "speaker_steps_skipped",
                           "translation_p95_per_audio"}
    assert out["targets"]["met"] == all(c["met"] for c in checks.values())
    assert checks["caption_steps_merged"]["value"] == captions["steps_merged"]
    assert out["audio_s"] == pytest.approx(SECONDS, abs=0.2)
    assert out["threads"]["inference"] >= 1
    assert out["threads"]["generation"] >= 1


def test_bench_all_targets_name_what_was_missed() -> None:
    tasks = {"captions": {"final_latency_p95_s": 1.2, "steps_merged": 0},
             "keywords": {"latency_p95_s": None, "windows_skipped": 0},
             "speakers": {"steps_skipped": 3},
             "translation": {"latency_per_audio_s_p95": 2.0}}
    result = targets(tasks)
    assert not result["met"]
    assert result["missed"] == ["keyword_p95_s None (target < 1.0 s)",
                                "speaker_steps_skipped 3 (target 0)"]
    assert result["checks"]["translation_p95_per_audio"]["met"]  # 2x is within 2x
    tasks["captions"]["final_latency_p95_s"] = 1.5
    assert not targets({"captions": tasks["captions"]})["checks"]["caption_final_p95_s"]["met"]
    assert targets({})["met"]  # nothing to check


def test_bench_streams_runs_n_streams_through_one_worker(speech: Path,
                                                         tiny: dict[str, str]) -> None:
    out = bench_streams(streams=[1, 2], find=False, tasks=("captions", "keywords"),
                        model="tiny", seconds=SECONDS, audio=speech, device_type="cpu",
                        dtype="auto", precision="auto", vad_engine="webrtc",
                        models=_models(tiny, translation=False))
    json.dumps(out)
    assert out["vad_engine"] == "webrtc"
    assert [r["streams"] for r in out["runs"]] == [1, 2]  # a list: each N in turn
    run = out["runs"][1]
    assert {"final_latency_p50_s", "final_latency_p95_s", "partial_latency_p95_s",
            "final_ready_latency_p95_s", "split_final_latency_p95_s", "finals", "split_finals",
            "batch_sizes", "skipped", "finals_missing", "kept_up", "missed",
            "event_loop_lag_p99_ms"} <= set(run)
    assert run["kept_up"] == (run["missed"] == [])
    assert run["finals"] + run["split_finals"] == run["segments"] - run["finals_missing"]
    assert 0 < run["event_loop_busy"] <= 1.05  # CPU time of the loop's thread over wall time
    assert run["audio_s_per_stream"] == pytest.approx(SECONDS, abs=0.2)
    assert sum(run["batch_sizes"].values()) == run["batches"] > 0


def test_missed_says_why_a_run_did_not_keep_up() -> None:
    assert missed_reasons(final_p95=0.3, split_p95=2.0, split_bar=2.5, missing_finals=0,
                          merged_steps=0) == []
    missed = missed_reasons(final_p95=0.57, split_p95=2.6, split_bar=2.5, missing_finals=2,
                            merged_steps=3)
    assert missed == ["final p95 0.57 s >= 0.5 s", "split final p95 2.60 s >= 2.5 s",
                      "3 caption steps merged", "2 finals missing"]
    assert missed_reasons(final_p95=None, split_p95=None, split_bar=2.5, missing_finals=0,
                          merged_steps=0) == ["no final after a pause"]
    assert missed_reasons(final_p95=0.3, split_p95=None, split_bar=2.5, missing_finals=0,
                          merged_steps=1) == ["1 caption step merged"]


def test_find_capacity_doubles_then_bisects() -> None:
    limit = 11  # the fake "machine" keeps up with up to 11 streams

    def trial(n: int) -> dict[str, object]:
        return {"streams": n, "kept_up": n <= limit}

    capacity, runs = find_capacity(trial, start=1, limit=512)
    assert capacity == limit
    assert [r["streams"] for r in runs][:5] == [1, 2, 4, 8, 16]
    assert find_capacity(lambda n: {"kept_up": False}, start=1, limit=8)[0] == 0


def test_tasks_flag_needs_captions() -> None:
    assert parse_tasks("captions,speakers") == ("captions", "speakers")
    with pytest.raises(ConfigError, match="captions"):
        parse_tasks("speakers")


def test_cli_parses_the_new_benches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "streams", "--tasks", "captions", "--precision", "int4"])
    assert exit_info.value.code == 2
    assert "--precision" in capsys.readouterr().err


def test_the_shared_speech_is_found_from_a_worktree_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harken.app.bench import shared_audio

    monkeypatch.delenv(shared_audio.ENV, raising=False)
    project = tmp_path / "wt" / "mine"
    project.mkdir(parents=True)
    monkeypatch.setattr(shared_audio, "ROOT", project)
    assert shared_audio.shared_audio_root() is None
    (tmp_path / "shared" / "audio").mkdir(parents=True)
    assert shared_audio.shared_audio_root() == tmp_path / "shared" / "audio"
    monkeypatch.setenv(shared_audio.ENV, str(tmp_path / "elsewhere"))
    assert shared_audio.shared_audio_root() == tmp_path / "elsewhere"
