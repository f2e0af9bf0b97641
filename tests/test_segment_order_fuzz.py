"""The README order per stream under live steps that take random times, a
superseded step, an annotator that settles early or late, and a background stage."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import numpy as np
import pytest
from test_pipeline import ListSource, QuietStage, labelled, run_engine, sample

from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    Keyword,
    SpeechEnded,
    SpeechStarted,
    Translation,
)
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.stages.base import StageContext
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE


class _Base(QuietStage):
    name = "base"

    def __init__(self, ctx: StageContext, rng: random.Random) -> None:
        self.stream = ctx.stream
        self.rng = rng
        self.open: int | None = None
        self.heard: int | None = None  # the last segment it heard of
        self.starts: dict[int, int] = {}

    def on_start(self, start: SegmentStart) -> None:
        self.open = self.heard = start.segment
        self.starts[start.segment] = start.start

    def on_audio(self, audio: SegmentAudio) -> None:
        pass

    async def _nap(self) -> None:
        await asyncio.sleep(self.rng.choice([0, 0, 0.001, 0.005, 0.02, 0.08]))


class Captions(_Base):
    name = "captions"

    async def step(self) -> list[Event]:
        await self._nap()
        seg = self.open
        if seg is None:
            return []
        return [CaptionPartial(stream=self.stream, start=0.0, end=0.0, segment=seg, text="p")]

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await self._nap()
        self.open = None
        return [CaptionFinal(stream=self.stream, start=self.starts[end.segment] / SAMPLE_RATE,
                             end=end.end / SAMPLE_RATE, segment=end.segment, text="f")]


class Keywords(_Base):
    name = "keywords"

    async def step(self) -> list[Event]:
        await self._nap()
        seg = self.open
        if seg is None or self.rng.random() < 0.5:
            return []
        return [Keyword(stream=self.stream, start=0.0, end=0.0, keyword="open", score=1.0,
                        segment=seg)]

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await self._nap()
        self.open = None
        return [Keyword(stream=self.stream, start=0.0, end=0.0, keyword="end", score=1.0,
                        segment=end.segment)]


class Speakers(_Base):
    name = "speakers"

    def __init__(self, ctx: StageContext, rng: random.Random) -> None:
        super().__init__(ctx, rng)
        self.in_step = False

    async def step(self) -> list[Event]:
        self.in_step = True
        try:
            await self._nap()
        finally:
            self.in_step = False
        return []

    def end_supersedes_step(self) -> bool:
        return self.in_step and self.rng.random() < 0.5

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await self._nap()
        self.open = None
        return []

    def annotate(self, event: Event) -> Event:
        # A label from a segment it heard of later shows (live, the close runs beside the
        # VAD: the annotator must not hear of the next segment before labelling this one).
        heard = getattr(event, "segment", None) == self.heard
        return labelled(event, "S1" if heard else f"S1 after {self.heard}")

    def settled(self, event: Event) -> bool:
        return self.rng.random() < 0.5


class Translate(_Base):
    name = "translation"

    def __init__(self, ctx: StageContext, rng: random.Random) -> None:
        super().__init__(ctx, rng)
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        self.open = None
        self.queue.put_nowait(end.segment)
        return []

    def on_stream_end(self) -> None:
        self.queue.put_nowait(None)

    def background(self) -> AsyncIterator[Event] | None:
        return self._run()

    async def _run(self) -> AsyncIterator[Event]:
        while (seg := await self.queue.get()) is not None:
            await self._nap()
            yield Translation(stream=self.stream, start=0.0, end=0.0, segment=seg, lang="de",
                              text="t")


def check_order(events: list[Event]) -> list[str]:
    """Violations of the README's order, per stream."""
    bad: list[str] = []
    by_stream: dict[str, list[Event]] = {}
    for e in events:
        by_stream.setdefault(e.stream, []).append(e)
    for sid, evs in by_stream.items():
        pos: dict[tuple[str, int], list[int]] = {}
        for i, e in enumerate(evs):
            seg = getattr(e, "segment", None)
            if seg is None:
                continue
            kind = e.type if not isinstance(e, Keyword) else f"keyword_{e.keyword}"
            pos.setdefault((kind, seg), []).append(i)
        segs = sorted({s for _, s in pos})
        for s in segs:
            started = pos.get(("speech_started", s), [None])[0]
            ended = pos.get(("speech_ended", s), [None])[0]
            final = pos.get(("caption_final", s), [None])[0]
            if started is None or ended is None or final is None:
                bad.append(f"{sid}/{s}: missing started/ended/final {started} {ended} {final}")
                continue
            for kind in ("caption_partial", "keyword_open"):
                for i in pos.get((kind, s), []):
                    if not started < i < ended:
                        bad.append(f"{sid}/{s}: {kind} at {i} outside ({started}, {ended})")
            if not ended < final:
                bad.append(f"{sid}/{s}: final {final} before speech_ended {ended}")
            for kind in ("translation", "keyword_end"):
                for i in pos.get((kind, s), []):
                    if i < final:
                        bad.append(f"{sid}/{s}: {kind} {i} before final {final}")
            nxt = pos.get(("speech_started", s + 1), [None])[0]
            if nxt is not None and nxt < final:
                bad.append(f"{sid}/{s}: next speech_started {nxt} before final {final}")
            # Live, the close runs beside the VAD: none of the next segment's own events
            # (its annotations aside) comes before this one's end events are out.
            closed = max([final, *pos.get(("keyword_end", s), [])])
            own = [i for kind in ("speech_started", "caption_partial", "keyword_open",
                                  "speech_ended", "caption_final")
                   for i in pos.get((kind, s + 1), [])]
            if own and min(own) < closed:
                bad.append(f"{sid}/{s + 1}: an event at {min(own)} before the end events "
                           f"of {s} ({closed})")
        finals = [e for e in evs if isinstance(e, CaptionFinal)]
        if any(f.speaker != "S1" for f in finals):
            bad.append(f"{sid}: a final without its speaker label")
    return bad


FUZZ_VAD = VadOptions(max_segment_s=1.5, split_search_s=0.5)  # splits as well as pauses


async def run_fuzz(seed: int, *, streams: int = 3, pace_s: float = 0.0,
                   stop_after_s: float | None = None) -> list[Event]:
    """`streams` offset copies of the sample through the four fake stages, live; `stop_after_s`:
    engine.stop() that long after the start."""
    rng = random.Random(seed)
    audio = sample()
    makers = [lambda ctx, k=k: k(ctx, rng) for k in (Captions, Keywords, Speakers, Translate)]
    source = ListSource({f"s{i}": np.roll(audio, 1600 * i) for i in range(streams)},
                        pace_s=pace_s)
    engines: list[Engine] = []

    async def stop() -> None:
        if stop_after_s is None:
            return
        await asyncio.sleep(stop_after_s)
        engines[0].stop()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(stop())
        run = run_engine(source, stages=makers, live=True, vad=FUZZ_VAD, maxsize=100_000,
                         engine_ref=engines)
        return await asyncio.wait_for(run, timeout=120)


@pytest.mark.parametrize("seed", range(3))
async def test_live_order_holds_with_random_step_times(seed: int) -> None:
    events = await run_fuzz(seed)
    assert sum(isinstance(e, CaptionFinal) for e in events) > 3
    assert sum(isinstance(e, SpeechStarted) for e in events) == \
        sum(isinstance(e, SpeechEnded) for e in events)
    assert check_order(events) == []


class FailingCaptions(Captions):
    """Its third step raises a programming error (not an InferenceError)."""

    def __init__(self, ctx: StageContext, rng: random.Random) -> None:
        super().__init__(ctx, rng)
        self.steps = 0

    async def step(self) -> list[Event]:
        self.steps += 1
        await self._nap()
        if self.steps == 3:
            raise RuntimeError("a bug in a step")
        return await super().step()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def test_a_live_step_that_raises_ends_the_run_with_its_error() -> None:
    rng = random.Random(0)
    makers = [lambda ctx: FailingCaptions(ctx, rng), lambda ctx: Speakers(ctx, rng)]
    async with InferenceWorker(name="cpu") as worker:
        # Paced: read in one go, the file would leave the stage fewer than three steps.
        engine = Engine(sources=[ListSource({"a": sample()}, pace_s=0.002)],
                        stages=makers,  # type: ignore[arg-type]
                        worker=worker, options=EngineOptions(live=True, levels=False))
        with pytest.raises(BaseExceptionGroup) as info:
            await asyncio.wait_for(engine.run(), timeout=30)  # no hang
    leaves = _leaves(info.value)
    assert [str(e) for e in leaves] == ["a bug in a step"]


@pytest.mark.parametrize("seed", range(4))
async def test_stop_at_any_time_keeps_the_order_and_closes_every_segment(seed: int) -> None:
    stop_after = random.Random(seed).uniform(0.05, 0.4)
    events = await run_fuzz(seed, pace_s=0.003, stop_after_s=stop_after)
    assert check_order(events) == []
