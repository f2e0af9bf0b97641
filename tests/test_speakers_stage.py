"""The speakers stage in the real engine, with small deterministic models.

The fake models read the signal itself: a low voice (120 Hz harmonics) and a high voice
(1200 Hz harmonics) are told apart by band energy, so the expected speakers are known and
what is tested is the stage: VAD gating, the speech clock, rolling windows, local-slot
permutations, clustering, turns on the stream clock, caption labelling, skipping, errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_pipeline import QuietStage
from tiny_speaker_models import voice

from harken.engine.events import CaptionFinal, Event, SpeakerTurn, StreamError
from harken.engine.metrics import ArrivalLog
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.sources.file import FileSource
from harken.engine.stages.base import Stage, StageContext
from harken.engine.stages.speakers import (
    MAX_WIDEN,
    DiarizationOptions,
    SpeakerStage,
    SpeechBuffer,
)
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.clustering import ClusteringOptions, Voiceprint
from harken.models.geometry import FrameGeometry

GEOMETRY = FrameGeometry(frame_samples=320, receptive_samples=400)
SPLIT_HZ = 800.0  # the low voice lies below, the high one above
# The synthetic voices are harmonic buzz: speech to webrtcvad, not to silero-vad, so the
# speaker logic is driven through webrtcvad alone.
WEBRTC = VadOptions(engine="webrtc")


def band_levels(window: np.ndarray) -> np.ndarray:
    """[frames, 2] RMS below / above SPLIT_HZ of each 400-sample frame, hop 320."""
    n = GEOMETRY.num_frames(len(window))
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(window, 400)[::320][:n]
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    low = np.fft.rfftfreq(400, 1 / SAMPLE_RATE) < SPLIT_HZ
    bands = np.stack([spec[:, low].sum(axis=1), spec[:, ~low].sum(axis=1)], axis=1)
    return (np.sqrt(bands) / 400).astype(np.float32)


class BandSegmenter:
    """Local slot activity from band energy; the slots swap on every other call."""

    model_id = "fake-segmenter"
    geometry = GEOMETRY
    num_speakers = 2
    batchable = True

    def __init__(self) -> None:
        self.calls = 0
        self.lengths: list[int] = []  # samples of each window seen

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for w in windows:
            self.lengths.append(len(w))
            act = 1 - np.exp(-band_levels(w) / 0.02)  # the other voice's band stays < 0.4
            out.append(act[:, ::-1].copy() if self.calls % 2 else act)
            self.calls += 1
        return out


class BandEmbedder:
    """Frame features = band levels; pooling = their weighted mean (a 2-d 'voice')."""

    model_id = "fake-embedder"
    geometry = GEOMETRY
    tdnn_context = 0
    batchable = True

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.fail:
            raise RuntimeError("device lost")
        return [band_levels(w) for w in windows]

    def pool(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        total = weights.sum(axis=0)
        return np.asarray((weights.T @ features) / total[:, None], dtype=np.float32)


class FinalStage(QuietStage):
    """Emits a bare caption final per segment, for the speakers stage to label."""

    name = "finals"

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.start = 0

    def on_start(self, start: SegmentStart) -> None:
        self.start = start.start

    def on_audio(self, audio: SegmentAudio) -> None:
        pass

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        return [CaptionFinal(stream=self.stream, start=self.start / SAMPLE_RATE,
                             end=end.end / SAMPLE_RATE, segment=end.segment, text="words")]


OPTIONS = DiarizationOptions(clustering=ClusteringOptions(delta_new=0.5))
LOW, HIGH = 120.0, 1200.0
# (voice pitch or None for silence, seconds)
SCRIPT = [(None, 0.5), (LOW, 3.0), (None, 1.5), (HIGH, 3.0), (None, 1.5), (LOW, 2.5),
          (None, 1.0)]


def script_audio(script: list[tuple[float | None, float]]) -> np.ndarray:
    parts = [np.zeros(round(s * SAMPLE_RATE), np.float32) if p is None
             else voice(s, pitch_hz=p, seed=i) for i, (p, s) in enumerate(script)]
    return np.concatenate(parts)


def talk_spans(script: list[tuple[float | None, float]]) -> list[tuple[float, float, float]]:
    spans, t = [], 0.0
    for pitch, s in script:
        if pitch is not None:
            spans.append((t, t + s, pitch))
        t += s
    return spans


async def run_engine(path: Path, *, voiceprints: Sequence[Voiceprint] = (),
                     embedder: BandEmbedder | None = None) -> list[Event]:
    events: list[Event] = []

    def speakers(ctx: StageContext) -> Stage:
        return SpeakerStage(stream=ctx.stream, segmenter=BandSegmenter(),
                            embedder=embedder or BandEmbedder(), worker=ctx.worker,
                            options=OPTIONS, live=ctx.live, arrivals=ctx.arrivals,
                            voiceprints=voiceprints)

    async with InferenceWorker(name="test") as worker:
        engine = Engine(sources=[FileSource(path=path, stream_id="talk")], worker=worker,
                        stages=[lambda ctx: FinalStage(ctx.stream), speakers],
                        options=EngineOptions(live=False, levels=False, vad=WEBRTC))
        sub = engine.subscribe("test", maxsize=10_000)

        async def collect() -> None:
            async for event in sub:
                events.append(event)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(collect())
            await engine.run()
    return events


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("talk") / "talk.wav"
    sf.write(str(path), script_audio(SCRIPT), SAMPLE_RATE)
    return path


def test_turns_and_caption_speakers_follow_who_talks(talk: Path) -> None:
    events = asyncio.run(run_engine(talk))
    turns = [e for e in events if isinstance(e, SpeakerTurn)]
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    spans = talk_spans(SCRIPT)
    assert len(finals) == len(spans)
    label = {LOW: finals[0].speaker, HIGH: finals[1].speaker}
    assert label[LOW] != label[HIGH]
    assert {label[LOW], label[HIGH]} == {"S1", "S2"}
    # The low voice comes back after a silence and keeps its label.
    assert [f.speaker for f in finals] == [label[p] for _, _, p in spans]
    for start, end, pitch in spans:
        mine = [t for t in turns if t.start < end + 0.6 and t.end > start - 0.4]
        assert mine, f"no turn during {start}-{end}"
        assert {t.speaker for t in mine} == {label[pitch]}
        covered = sum(min(t.end, end) - max(t.start, start) for t in mine)
        assert covered > 0.8 * (end - start)
    for t in turns:  # turns lie in speech (with VAD pre-roll/hangover), never in silence
        assert any(s - 0.35 <= t.start and t.end <= e + 0.55 for s, e, _ in spans), t
        assert 0 < t.score <= 1
        assert not t.enrolled
    stats = [e for e in events if e.type == "stats"][-1]
    assert stats.counters["speaker_steps"] > 0  # type: ignore[attr-defined]
    assert stats.counters["speaker_steps_skipped"] == 0  # type: ignore[attr-defined]


def test_files_give_the_same_result_every_time(talk: Path) -> None:
    def key(events: list[Event]) -> list[tuple[object, ...]]:
        return [(e.type, e.start, e.end, getattr(e, "speaker", None)) for e in events
                if isinstance(e, SpeakerTurn | CaptionFinal)]

    assert key(asyncio.run(run_engine(talk))) == key(asyncio.run(run_engine(talk)))


def test_an_enrolled_voiceprint_names_its_speaker(talk: Path) -> None:
    high = band_levels(voice(2.0, pitch_hz=HIGH, seed=42)).mean(axis=0)
    ann = Voiceprint(name="Ann", embedding=high)
    events = asyncio.run(run_engine(talk, voiceprints=[ann]))
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert [f.speaker for f in finals] == ["S1", "Ann", "S1"]
    named = [e for e in events if isinstance(e, SpeakerTurn) and e.speaker == "Ann"]
    assert named
    assert all(t.enrolled for t in named)


def test_a_failing_model_reports_errors_and_the_run_goes_on(talk: Path) -> None:
    events = asyncio.run(run_engine(talk, embedder=BandEmbedder(fail=True)))
    errors = [e for e in events if isinstance(e, StreamError)]
    assert errors
    assert "device lost" in errors[0].message
    assert len([e for e in events if isinstance(e, CaptionFinal)]) == 3
    assert not any(isinstance(e, SpeakerTurn) for e in events)
    stats = [e for e in events if e.type == "stats"][-1]
    assert stats.counters["speaker_failed_windows"] > 0  # type: ignore[attr-defined]


def test_live_mode_widens_one_analysis_over_the_steps_it_fell_behind_on() -> None:
    async def go() -> tuple[SpeakerStage, list[Event]]:
        async with InferenceWorker(name="test") as worker:
            stage = SpeakerStage(stream="mic", segmenter=BandSegmenter(),
                                 embedder=BandEmbedder(), worker=worker, options=OPTIONS,
                                 live=True, arrivals=ArrivalLog())
            audio = voice(4.0, pitch_hz=LOW)
            stage.on_start(SegmentStart(0, 0))
            stage.on_audio(SegmentAudio(0, 0, audio))  # 4 s arrive while inference lagged
            events = await stage.step()
            assert stage.steps == 1
            events += await stage.on_end(SegmentEnd(0, len(audio), False))
            return stage, events

    stage, events = asyncio.run(go())
    assert stage.skipped_steps == 0  # 7 steps behind: within MAX_WIDEN windows of 5 s
    assert stage.widened_steps == 1
    assert stage.merged_steps == 4.0 / 0.5 - 1
    assert stage.counters()["speaker_steps_merged"] == stage.merged_steps
    turns = [e for e in events if isinstance(e, SpeakerTurn)]
    assert [t.speaker for t in turns] == ["S1"]
    assert turns[0].end == pytest.approx(4.0, abs=0.03)


def test_a_widened_analysis_is_capped_and_counts_the_steps_beyond_the_cap() -> None:
    options = DiarizationOptions(window_s=1.0, step_s=0.5, latency_s=0.5,
                                 clustering=ClusteringOptions(delta_new=0.5))
    segmenter = BandSegmenter()

    async def go() -> SpeakerStage:
        async with InferenceWorker(name="test") as worker:
            stage = SpeakerStage(stream="mic", segmenter=segmenter, embedder=BandEmbedder(),
                                 worker=worker, options=options, live=True,
                                 arrivals=ArrivalLog())
            audio = voice(4.0, pitch_hz=LOW)
            stage.on_start(SegmentStart(0, 0))
            stage.on_audio(SegmentAudio(0, 0, audio))
            await stage.step()
            return stage

    stage = asyncio.run(go())
    behind = int(4.0 / 0.5) - 1
    merged = (MAX_WIDEN - 1) * 2  # one extra window of 1 s = 2 steps
    assert (stage.widened_steps, stage.merged_steps) == (1, merged)
    assert stage.skipped_steps == behind - merged
    assert segmenter.lengths == [MAX_WIDEN * 16_000]  # one pass over 2 windows of speech


def test_speech_buffer_maps_the_speech_clock_and_takes_resent_audio_once() -> None:
    buf = SpeechBuffer()
    buf.push(1000, np.ones(500, np.float32))
    buf.push(1300, np.full(400, 2.0, np.float32))  # a split re-sends 1300..1500
    buf.push(5000, np.full(100, 3.0, np.float32))  # after a gap
    assert buf.end == 500 + 200 + 100
    np.testing.assert_array_equal(buf.samples(495, 505), [1] * 5 + [2] * 5)
    assert buf.to_stream(0) == 1000
    assert buf.to_stream(699) == 1699
    assert buf.to_stream(700) == 5000
    assert buf.to_stream(700, end=True) == 1700  # an end stays in the piece before the gap
    buf.pad_to(320)  # a gap follows: align to the frame grid; the padding maps to the end
    assert buf.end == 960
    assert buf.to_stream(900) == buf.to_stream(960, end=True) == 5100
    buf.prune(audio_from=700, pieces_from=700)
    assert buf.start == 700
    assert buf.to_stream(750) == 5050
    with pytest.raises(ValueError, match="not buffered"):
        buf.samples(0, 10)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="latency_s"):
        DiarizationOptions(latency_s=9.0)
    with pytest.raises(ValueError, match="step_s"):
        DiarizationOptions(step_s=6.0)
    assert dataclasses.replace(OPTIONS, latency_s=2.0).latency_s == 2.0
