"""Padding for the refiner: the audio it gets is the segment plus `pad_before_s` before its
start and `pad_after_s` after its end, cut from the stream itself (a bounded ring), while the
caption_refined times stay the segment's; and the ring holds what it should."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_pipeline import ListSource, QuietStage, SegmentEcho, run_engine, sample
from tiny_models import build_tiny_ctc, speechlike_audio

from harken.app.config import HarkenConfig, RefineConfig
from harken.app.tasks.captions import caption_stages
from harken.app.tasks.refine import refine_stages
from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionFinal, CaptionRefined, Event, SpeechStarted
from harken.engine.metrics import ArrivalLog, FinalLog
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.sources.file import FileSource
from harken.engine.stages.base import StageContext
from harken.engine.stages.recorder import RecentAudio
from harken.engine.stages.refine import MAX_PAD_S, RefineStage, RefineStageOptions
from harken.engine.stages.translation import GenerationWorker
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.refine import RefinedText


class Recording:
    """A refiner that keeps the audio it is given."""

    model_id = "recording"

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []

    def refine(self, samples: np.ndarray) -> RefinedText:
        self.inputs.append(np.array(samples, copy=True))
        return RefinedText(text="Hello.", pieces=1)


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            self.events.append(event)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> CtcCaptioner:
    folder = build_tiny_ctc("hubert", tmp_path_factory.mktemp("ctc") / "hubert")
    return CtcCaptioner.from_pretrained(str(folder), device="cpu")


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """Three bursts with pauses; the last runs to the end of the file (no audio after it)."""
    rng = np.random.default_rng(3)
    parts = []
    for i in range(3):
        parts.append((1e-3 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))
        parts.append(speechlike_audio(0.9, seed=20 + i))
    audio = np.concatenate(parts)
    path = tmp_path_factory.mktemp("pad") / "talk.wav"
    sf.write(str(path), audio, SAMPLE_RATE, subtype="FLOAT")
    read, _ = sf.read(str(path), dtype="float32")
    return path, read


async def refine_with(path: Path, captioner: CtcCaptioner, *, before: float, after: float,
                      live: bool = False) -> tuple[Recording, list[CaptionRefined],
                                                   list[CaptionFinal]]:
    config = HarkenConfig(refine=RefineConfig(model="fake", guard=False, pad_before_s=before,
                                              pad_after_s=after))
    refiner, sink = Recording(), Collect()
    async with InferenceWorker(name="cpu") as worker, GenerationWorker(name="cpu") as gen:
        engine = Engine(sources=[FileSource(path=path, stream_id="talk", realtime=False)],
                        worker=worker,
                        stages=[caption_stages(config, captioner),
                                refine_stages(config, refiner, captioner, gen)],  # type: ignore[arg-type]
                        options=EngineOptions(live=live, levels=False))
        sub = engine.subscribe(sink.name)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sink.consume(sub))
            await asyncio.wait_for(engine.run(), 60)
    refined = [e for e in sink.events if isinstance(e, CaptionRefined)]
    finals = [e for e in sink.events if isinstance(e, CaptionFinal)]
    return refiner, refined, finals


def span(event: CaptionRefined) -> tuple[int, int]:
    return round(event.start * SAMPLE_RATE), round(event.end * SAMPLE_RATE)


async def test_without_padding_the_refiner_gets_exactly_the_segment(
        captioner: CtcCaptioner, talk: tuple[Path, np.ndarray]) -> None:
    path, audio = talk
    refiner, refined, _ = await refine_with(path, captioner, before=0.0, after=0.0)
    assert len(refined) == len(refiner.inputs) >= 3
    for event, given in zip(refined, refiner.inputs, strict=True):
        a, b = span(event)
        np.testing.assert_array_equal(given, audio[a:b])


@pytest.mark.parametrize("live", [False, True])
async def test_padding_adds_the_streams_own_audio_on_both_sides(
        captioner: CtcCaptioner, talk: tuple[Path, np.ndarray], live: bool) -> None:
    path, audio = talk
    before, after = 0.2, 0.3
    unpadded, plain, _ = await refine_with(path, captioner, before=0.0, after=0.0)
    refiner, refined, finals = await refine_with(path, captioner, before=before, after=after,
                                                 live=live)
    # Same segments and times: padding changes what the refiner hears, nothing else.
    assert [(e.segment, e.start, e.end) for e in refined] == \
        [(e.segment, e.start, e.end) for e in plain]
    assert [e.segment for e in refined] == [f.segment for f in finals]
    pb, pa = round(before * SAMPLE_RATE), round(after * SAMPLE_RATE)
    for event, given in zip(refined, refiner.inputs, strict=True):
        a, b = span(event)
        lo, hi = max(0, a - pb), min(len(audio), b + pa)
        np.testing.assert_array_equal(given, audio[lo:hi])
    # The last segment runs to the end of the file: it goes with no after-padding.
    last_a, last_b = span(refined[-1])
    assert last_b == len(audio)
    assert len(refiner.inputs[-1]) == last_b - max(0, last_a - pb)
    assert sum(map(len, refiner.inputs)) > sum(map(len, unpadded.inputs))


def test_padding_options_are_checked() -> None:
    with pytest.raises(ValueError, match="pad_after_s"):
        RefineStageOptions(pad_after_s=5.0)
    with pytest.raises(ValueError, match="pad_before_s"):
        RefineStageOptions(pad_before_s=-0.1)


def block(start: int, values: list[float]) -> AudioBlock:
    return AudioBlock(stream="s", start=start, samples=np.array(values, np.float32))


def test_recent_audio_keeps_the_newest_samples_with_their_positions() -> None:
    ring = RecentAudio(capacity=5)
    ring.add(block(10, [1, 2, 3]))
    assert (ring.start, ring.end) == (10, 13)
    np.testing.assert_array_equal(ring.take(0, 100), [1, 2, 3])
    ring.add(block(13, [4, 5, 6, 7]))  # wraps: 1 and 2 are gone
    assert (ring.start, ring.end) == (12, 17)
    np.testing.assert_array_equal(ring.take(11, 17), [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(ring.take(14, 16), [5, 6])
    assert ring.take(20, 30).size == 0
    ring.add(block(15, [9, 9, 8]))  # 15 and 16 were fed already: kept once
    np.testing.assert_array_equal(ring.take(0, 100), [4, 5, 6, 7, 8])
    ring.add(block(20, [1]))  # a gap on the clock is silence
    np.testing.assert_array_equal(ring.take(0, 100), [7, 8, 0, 0, 1])
    ring.add(block(100, [2, 3]))  # a gap longer than the ring
    assert (ring.start, ring.end) == (97, 102)
    np.testing.assert_array_equal(ring.take(0, 200), [0, 0, 0, 2, 3])
    ring.add(block(102, list(range(12))))  # a block longer than the ring
    np.testing.assert_array_equal(ring.take(0, 200), [7, 8, 9, 10, 11])


async def refine_blocks(audio: np.ndarray, said: dict[int, list[object]],
                        options: RefineStageOptions) -> tuple[Recording, list[Event]]:
    """A file run of the refine stage: 0.1 s blocks, and after the block that ends at
    sample n the VAD outputs `said[n]`; what the refiner got and the stage's events."""
    refiner = Recording()
    async with GenerationWorker(name="cpu") as gen:
        stage = RefineStage(stream="s", refiner=refiner, generator=gen, live=False,
                            arrivals=ArrivalLog(), finals=FinalLog(), vocabulary=None,
                            frame_s=0.02, options=options)
        for start in range(0, len(audio), 1_600):
            stage.on_block(AudioBlock(stream="s", start=start,
                                      samples=audio[start:start + 1_600]))
            for out in said.get(start + 1_600, []):
                if isinstance(out, SegmentStart):
                    stage.on_start(out)
                elif isinstance(out, SegmentAudio):
                    stage.on_audio(out)
                elif isinstance(out, SegmentEnd):
                    await stage.on_end(out)
            await stage.step()
        stage.on_stream_end()
        events = [e async for e in stage.background()]
    return refiner, events


async def test_padding_never_reaches_into_a_neighbouring_segment() -> None:
    """Segments 0 and 1 abut (the VAD clamps a pre-roll to the previous end, or splits);
    segment 2 follows a pause. Each sample's value is its position, so the audio the
    refiner got says where it came from."""
    audio = np.arange(64_000, dtype=np.float32)
    segments = [(16_000, 32_000), (32_000, 40_000), (48_000, 56_000)]
    pb, pa = 3_200, 4_800  # 0.2 s, 0.3 s
    # What the VAD says after each block (by the block's end): an end as soon as it comes,
    # a start a little later than the position it names (its onset is confirmed late).
    said: dict[int, list[object]] = {}
    for i, (a, b) in enumerate(segments):
        said.setdefault(a + 1_600, []).extend(
            [SegmentStart(i, a), SegmentAudio(i, a, audio[a:b])])
        said.setdefault(b, []).insert(0, SegmentEnd(i, b, False))
    refiner, events = await refine_blocks(audio, said, RefineStageOptions(pad_before_s=0.2,
                                                                          pad_after_s=0.3))
    assert [e.segment for e in events if isinstance(e, CaptionRefined)] == [0, 1, 2]
    got = [(int(x[0]), int(x[-1]) + 1) for x in refiner.inputs]
    assert got == [
        (16_000 - pb, 32_000),  # after-padding stops where segment 1 starts
        (32_000, 40_000 + pa),  # no before-padding: segment 0 ends where it starts
        (48_000 - pb, 56_000 + pa),  # the pause before it is 0.5 s: a full 0.2 s
    ]
    for x in refiner.inputs:
        np.testing.assert_array_equal(np.diff(x), 1)  # contiguous stream audio


class SlowLastPass(QuietStage):
    """An annotator whose close (the speakers stage's last pass) lets the VAD read on:
    it closes once the stream has read `ahead_s` past the segment's end, or after 1 s."""

    name = "slow-last-pass"

    def __init__(self, ctx: StageContext, engines: list[Engine], ahead_s: float) -> None:
        self.stream = ctx.stream
        self.engines = engines
        self.ahead = round(ahead_s * SAMPLE_RATE)

    def on_start(self, start: SegmentStart) -> None:
        pass

    def on_audio(self, audio: SegmentAudio) -> None:
        pass

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        for _ in range(100):
            state = self.engines[0].streams.get(self.stream)
            if state is None or state.last_end >= end.end + self.ahead:
                break
            await asyncio.sleep(0.01)
        return []

    def annotate(self, event: Event) -> Event:
        return event


async def test_live_after_padding_stops_at_the_next_segment_while_a_slow_close_runs(
        ) -> None:
    """Live, a segment closes beside the VAD: the refiner, which closes it after a slow
    annotator, must not hear the audio the VAD read meanwhile before it hears of the next
    segment, or its after-padding runs into that segment's words."""
    refiner, engines = Recording(), []
    async with GenerationWorker(name="cpu") as gen:
        def refine(ctx: StageContext) -> RefineStage:
            return RefineStage(stream=ctx.stream, refiner=refiner, generator=gen, live=True,
                               arrivals=ctx.arrivals, finals=ctx.finals, vocabulary=None,
                               frame_s=0.02, options=RefineStageOptions(
                                   pad_after_s=MAX_PAD_S, join_short_s=0.0))
        events = await asyncio.wait_for(run_engine(
            ListSource({"a": sample()}, pace_s=0.005), live=True, engine_ref=engines,
            stages=[SegmentEcho, lambda ctx: SlowLastPass(ctx, engines, 2 * MAX_PAD_S),
                    refine]), timeout=60)
    starts = {e.segment: round(e.start * SAMPLE_RATE) for e in events
              if isinstance(e, SpeechStarted)}
    refined = [e for e in events if isinstance(e, CaptionRefined)]
    assert len(refined) == len(refiner.inputs) == len(starts) >= 2
    for event, given in zip(refined, refiner.inputs, strict=True):
        a, b = span(event)
        # Up to the next segment's start, or to the end of the stream after the last one.
        stop = starts.get(event.segment + 1, len(sample()))
        assert a + len(given) == min(b + round(MAX_PAD_S * SAMPLE_RATE), stop)


async def test_no_after_padding_at_a_vad_split() -> None:
    """A split ends a segment inside speech and opens the next at the same point, in one
    VAD output, decided up to split_search_s later (the stream has been read past it):
    after-padding would be the next segment's own words."""
    audio = np.arange(64_000, dtype=np.float32)
    split_at, decided = 32_000, 48_000  # 1 s after the split point
    said: dict[int, list[object]] = {
        16_000 + 1_600: [SegmentStart(0, 16_000), SegmentAudio(0, 16_000, audio[16_000:decided])],
        decided: [SegmentEnd(0, split_at, True), SegmentStart(1, split_at),
                  SegmentAudio(1, split_at, audio[split_at:56_000])],
        56_000: [SegmentEnd(1, 56_000, False)],
    }
    refiner, events = await refine_blocks(audio, said, RefineStageOptions(
        pad_before_s=0.2, pad_after_s=0.3, join_short_s=0.0))
    assert [e.segment for e in events if isinstance(e, CaptionRefined)] == [0, 1]
    got = [(int(x[0]), int(x[-1]) + 1) for x in refiner.inputs]
    assert got == [(16_000 - 3_200, split_at), (split_at, 56_000 + 4_800)]
