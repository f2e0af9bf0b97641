"""The engine with fake stages: routing of streams, event order, pause, stats, levels."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from harken.engine import vad as vad_module
from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionFinal, Event, Level, SpeechEnded, SpeechStarted, Stats
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.stages.base import StageContext
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
BLOCK = SAMPLE_RATE // 10


def sample() -> np.ndarray:
    audio, rate = sf.read(str(ROOT / "assets" / "sample.wav"), dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


class ListSource:
    """Yields pre-made blocks for one or more streams, interleaved like a satellite hub."""

    def __init__(self, streams: dict[str, np.ndarray], *, pause_at: float | None = None,
                 engine_ref: list[Engine] | None = None, pace_s: float = 0.0) -> None:
        """`pace_s`: seconds slept after each round of blocks (0: as fast as the engine
        takes them)."""
        self.streams = streams
        self.pace_s = pace_s
        self.description = "test"
        self._pause_at = pause_at
        self._engine_ref = engine_ref

    async def __aenter__(self) -> ListSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        longest = max(len(a) for a in self.streams.values())
        for start in range(0, longest, BLOCK):
            if self._pause_at is not None and self._engine_ref and start >= self._pause_at * \
                    SAMPLE_RATE:
                self._engine_ref[0].pause()
            for sid, audio in self.streams.items():
                if start < len(audio):
                    yield AudioBlock(stream=sid, start=start, samples=audio[start:start + BLOCK])
            await asyncio.sleep(self.pace_s)


class QuietStage:
    """The Stage methods a test stage rarely needs: no counters, no latencies, no
    background events."""

    def counters(self) -> dict[str, int]:
        return {}

    def latencies(self) -> dict[str, float | None]:
        return {}

    def background(self) -> AsyncIterator[Event] | None:
        return None


def labelled(event: Event, speaker: str) -> Event:
    """A test annotator's answer: a caption final with `speaker` filled in."""
    if isinstance(event, CaptionFinal):
        return dataclasses.replace(event, speaker=speaker)
    return event


class SegmentEcho(QuietStage):
    """A stage that emits one final per segment with the number of samples it received."""

    name = "echo"

    def __init__(self, ctx: StageContext) -> None:
        self.stream = ctx.stream
        self.samples: dict[int, int] = {}
        self.starts: dict[int, int] = {}

    def on_start(self, start: SegmentStart) -> None:
        self.samples[start.segment] = 0
        self.starts[start.segment] = start.start

    def on_audio(self, audio: SegmentAudio) -> None:
        self.samples[audio.segment] += len(audio.samples)

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        start = self.starts[end.segment]
        return [CaptionFinal(stream=self.stream, start=start / SAMPLE_RATE,
                             end=end.end / SAMPLE_RATE, segment=end.segment,
                             text=str(self.samples[end.segment]))]

    def counters(self) -> dict[str, int]:
        return {"echo_segments": len(self.samples)}


async def run_engine(source: Any, *, engine_ref: list[Engine] | None = None,
                     levels: bool = False, vad_threads: int = 0,
                     stages: Sequence[Any] = (SegmentEcho,), live: bool = False,
                     vad: VadOptions | None = None, maxsize: int = 10_000) -> list[Event]:
    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[source], stages=list(stages), worker=worker,
                        options=EngineOptions(levels=levels, stats_interval_s=2.0,
                                              vad_threads=vad_threads, live=live,
                                              vad=vad or VadOptions()))
        if engine_ref is not None:
            engine_ref.append(engine)
        sub = engine.subscribe("test", maxsize=maxsize)
        events: list[Event] = []

        async def collect() -> None:
            events.extend([e async for e in sub])

        async with asyncio.TaskGroup() as tg:
            tg.create_task(collect())
            await engine.run()
    return events


async def test_two_streams_from_one_source_are_independent() -> None:
    audio = sample()
    other = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), audio])
    events = await run_engine(ListSource({"kitchen": audio, "office": other}))
    for sid, offset in (("kitchen", 0.0), ("office", 1.0)):
        mine = [e for e in events if e.stream == sid]
        starts = [e for e in mine if isinstance(e, SpeechStarted)]
        finals = [e for e in mine if isinstance(e, CaptionFinal)]
        assert len(starts) == len(finals) >= 2
        assert [f.segment for f in finals] == list(range(len(finals)))
        # The same speech, one second later on the office stream's clock.
        assert finals[0].start == pytest.approx(0.21 + offset, abs=0.1)
        # Each final follows its speech_ended; the echo stage saw contiguous audio.
        for f in finals:
            ended = next(e for e in mine if isinstance(e, SpeechEnded) and e.segment == f.segment)
            assert mine.index(ended) < mine.index(f)
            assert int(f.text) >= round((f.end - f.start) * SAMPLE_RATE)
        assert isinstance(mine[-1], Stats)
        assert mine[-1].counters["echo_segments"] == len(finals)


async def test_vads_on_a_thread_pool_give_the_same_segments() -> None:
    audio = sample()
    streams = {"kitchen": audio, "office": np.concatenate([np.zeros(4000, np.float32), audio]),
               "hall": audio[8000:]}

    def segments(events: list[Event]) -> list[tuple[str, str, float, float, str]]:
        return [(e.stream, type(e).__name__, e.start, getattr(e, "end", 0.0),
                 getattr(e, "text", "")) for e in events
                if isinstance(e, SpeechStarted | SpeechEnded | CaptionFinal)]

    on_loop = await run_engine(ListSource(streams))
    pooled = await run_engine(ListSource(streams), vad_threads=2)
    assert len(segments(on_loop)) >= 12
    for sid in streams:  # per stream, the very same events in the same order
        assert [x for x in segments(pooled) if x[0] == sid] == \
            [x for x in segments(on_loop) if x[0] == sid]


async def test_pause_hears_silence_but_keeps_the_clock() -> None:
    audio = np.tile(sample(), 2)
    ref: list[Engine] = []
    events = await run_engine(ListSource({"s": audio}, pause_at=3.0, engine_ref=ref),
                              engine_ref=ref)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert starts
    assert all(e.start < 3.0 for e in starts)
    stats = [e for e in events if isinstance(e, Stats)][-1]
    assert stats.end == pytest.approx(len(audio) / SAMPLE_RATE, abs=0.01)
    assert stats.counters["paused_samples"] == pytest.approx(len(audio) - 3 * SAMPLE_RATE,
                                                             abs=BLOCK)


async def test_levels_and_periodic_stats() -> None:
    events = await run_engine(ListSource({"s": sample()}), levels=True)
    levels = [e for e in events if isinstance(e, Level)]
    assert len(levels) == int(np.ceil(len(sample()) / BLOCK))
    assert any(lv.speech for lv in levels)
    assert not all(lv.speech for lv in levels)
    assert min(lv.dbfs for lv in levels) < -60 < max(lv.dbfs for lv in levels)
    stats = [e for e in events if isinstance(e, Stats)]
    assert len(stats) >= 4  # every 2 s of stream clock, plus the last one
    assert [s.end for s in stats] == sorted(s.end for s in stats)


async def test_a_failing_source_ends_the_run_with_its_error() -> None:
    class Broken(ListSource):
        async def blocks(self) -> AsyncIterator[AudioBlock]:
            yield AudioBlock(stream="s", start=0, samples=np.zeros(BLOCK, np.float32))
            raise OSError("device unplugged")

    with pytest.raises(ExceptionGroup) as err:
        await run_engine(Broken({"s": sample()}))
    assert err.group_contains(OSError)


async def test_sinks_get_everything_queued_before_a_source_failure(
    tiny_ctc_dirs: dict[str, Path],
) -> None:
    """A device lost mid-run: what the engine produced before still reaches every sink."""
    from harken.app.config import HarkenConfig
    from harken.app.session import Session
    from harken.app.tasks.loader import ModelLoader
    from harken.models.captions import CtcCaptioner
    from harken.models.errors import AudioDeviceError

    class Unplugged(ListSource):
        async def blocks(self) -> AsyncIterator[AudioBlock]:
            async for block in super().blocks():
                yield block
            raise AudioDeviceError("the input device went away")

    class SlowSink:
        name = "slow"

        def __init__(self) -> None:
            self.events: list[Event] = []

        async def consume(self, events: Any) -> None:
            async for event in events:
                await asyncio.sleep(0.01)
                self.events.append(event)

    sink = SlowSink()
    captioner = CtcCaptioner.from_pretrained(str(tiny_ctc_dirs["hubert"]), device="cpu")
    session = Session(config=HarkenConfig(), sources=[Unplugged({"s": sample()})],
                      sinks=[sink], live=False,
                      models=ModelLoader(captioner=captioner))
    with pytest.raises(ExceptionGroup) as err:
        await session.run()
    assert err.group_contains(AudioDeviceError)
    finals = [e for e in sink.events if isinstance(e, CaptionFinal)]
    assert len(finals) == 2  # both sentences of the sample, the second closed by the flush
    assert isinstance(sink.events[-1], Stats)


async def test_a_failing_stage_ends_a_fast_run_instead_of_hanging() -> None:
    """Reading outpaces a slow stage, so the block queue is full when the stage fails."""

    class SlowThenBroken(SegmentEcho):
        steps = 0

        async def step(self) -> list[Event]:
            await asyncio.sleep(0.005)
            SlowThenBroken.steps += 1
            if SlowThenBroken.steps == 150:
                raise KeyError("a bug in a stage")
            return []

    audio = np.tile(sample(), 8)  # 70 s: far more blocks than the queue holds
    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[ListSource({"s": audio})], stages=[SlowThenBroken],
                        worker=worker, options=EngineOptions(levels=False))
        engine.subscribe("unread", maxsize=10_000)
        with pytest.raises(ExceptionGroup) as err:
            await asyncio.wait_for(engine.run(), timeout=30)
    assert err.group_contains(KeyError)


async def test_cancelling_a_fast_run_returns_promptly() -> None:
    class Slow(SegmentEcho):
        async def step(self) -> list[Event]:
            await asyncio.sleep(0.005)
            return []

    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[ListSource({"s": np.tile(sample(), 8)})], stages=[Slow],
                        worker=worker, options=EngineOptions(levels=False))
        engine.subscribe("unread", maxsize=10_000)
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.5)
        task.cancel()  # what Ctrl-C does
        done, _ = await asyncio.wait({task}, timeout=10)
    assert task in done
    assert task.cancelled()


async def test_the_vad_network_loads_off_the_event_loop_before_the_first_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded on the loop by the first stream's segmenter, it stalled that stream's first
    blocks (~0.1 s); the engine loads it in a thread before reading any source."""
    threads: list[bool] = []
    real = vad_module.load_silero_vad

    def recording() -> object:
        threads.append(threading.current_thread() is threading.main_thread())
        return real()

    monkeypatch.setattr(vad_module, "load_silero_vad", recording)
    events = await run_engine(ListSource({"a": sample()}), vad=VadOptions(engine="both"))
    assert any(isinstance(e, CaptionFinal) for e in events)
    assert threads[0] is False  # the first load was in a worker thread
