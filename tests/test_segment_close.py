"""How the engine closes a segment: live steps beside the VAD, final latency as published,
a caption final that goes out once its speaker is decided, a step superseded by on_end."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest
from test_pipeline import ListSource, SegmentEcho, labelled, run_engine, sample
from test_speakers_stage import OPTIONS, BandEmbedder, BandSegmenter
from tiny_speaker_models import voice

from harken.engine.audio import AudioBlock
from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    SpeechEnded,
    SpeechStarted,
    Stats,
)
from harken.engine.metrics import ArrivalLog
from harken.engine.pipeline import BLOCK_QUEUE_SIZE, MAX_HELD_EVENTS, Engine
from harken.engine.stages.base import StageContext
from harken.engine.stages.speakers import DiarizationSwitch, SpeakerStage
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions
from harken.engine.worker import PRIORITY_CAPTIONS, InferenceWorker
from harken.models.audio import SAMPLE_RATE

LOW = 120.0  # Hz: the band models' low voice


async def run(stages: list[object], *, live: bool, vad: VadOptions | None = None,
              engine_ref: list[Engine] | None = None) -> tuple[Engine, list[Event]]:
    engines = engine_ref if engine_ref is not None else []
    events = await asyncio.wait_for(
        run_engine(ListSource({"a": sample()}), stages=stages, live=live, vad=vad,
                   engine_ref=engines), timeout=60)
    return engines[-1], events


class SlowStep(SegmentEcho):
    """Counts the audio that reaches it while one of its steps is in flight."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.stepping = False
        self.audio_during_steps = 0

    def on_audio(self, audio: SegmentAudio) -> None:
        super().on_audio(audio)
        self.audio_during_steps += self.stepping

    async def step(self) -> list[Event]:
        self.stepping = True
        await asyncio.sleep(0.01)
        self.stepping = False
        return []


@pytest.mark.parametrize("live", [True, False])
async def test_live_steps_run_beside_the_vad_and_files_step_in_line(live: bool) -> None:
    made: list[SlowStep] = []

    def factory(ctx: StageContext) -> SlowStep:
        made.append(SlowStep(ctx))
        return made[-1]

    _, events = await run([factory], live=live)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    # Every sample of every segment reached the stage either way.
    assert finals
    assert all(int(f.text) > 0 for f in finals)
    assert (made[0].audio_during_steps > 0) is live


async def test_final_latency_is_taken_when_the_final_is_published() -> None:
    """Published finals are timed by the engine, those after a VAD split apart."""
    vad = VadOptions(max_segment_s=1.5, split_search_s=0.5)
    engine, events = await run([SegmentEcho], live=True, vad=vad)
    state = engine.streams["a"]
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    split = len(state.split_final_latency)
    assert split > 0
    assert len(state.final_latency) > 0
    assert split + len(state.final_latency) == len(finals)
    assert all(v >= 0 for v in state.final_latency.values())


class Annotating(SegmentEcho):
    """An annotator whose on_end takes a while; says the label is settled or not."""

    name = "annotating"

    def __init__(self, ctx: StageContext, *, settled: bool, engine: list[Engine]) -> None:
        super().__init__(ctx)
        self._settled = settled
        self._engine = engine
        self.published_before_my_end: list[bool] = []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await asyncio.sleep(0.02)  # the last analysis
        state = self._engine[0].streams["a"]
        published = len(state.final_latency) + len(state.split_final_latency)
        self.published_before_my_end.append(published > end.segment)
        return []

    def annotate(self, event: Event) -> Event:
        return labelled(event, "S1")

    def settled(self, event: Event) -> bool:
        return self._settled


@pytest.mark.parametrize("settled", [True, False])
async def test_a_settled_final_does_not_wait_for_the_annotators_end(settled: bool) -> None:
    engines: list[Engine] = []
    made: list[Annotating] = []

    def annotating(ctx: StageContext) -> Annotating:
        made.append(Annotating(ctx, settled=settled, engine=engines))
        return made[-1]

    _, events = await run([SegmentEcho, annotating], live=True, engine_ref=engines)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert finals
    assert all(f.speaker == "S1" for f in finals)
    assert made[0].published_before_my_end == [settled] * len(finals)


class Superseded(SegmentEcho):
    """A step far slower than the audio; its on_end does the work instead."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.cancelled = 0

    async def step(self) -> list[Event]:
        try:
            await asyncio.sleep(2.0)  # the whole file is read meanwhile
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return []

    def end_supersedes_step(self) -> bool:
        return True


async def test_a_segment_end_cancels_a_step_its_on_end_supersedes() -> None:
    made: list[Superseded] = []

    def factory(ctx: StageContext) -> Superseded:
        made.append(Superseded(ctx))
        return made[-1]

    _engine, events = await run([factory], live=True)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert len(finals) > 1
    stats = [e for e in events if isinstance(e, Stats)][-1]
    # Each end cancelled the step in flight instead of waiting for it.
    assert stats.counters["superseded_steps"] == made[0].cancelled == len(finals)


class Blocker:
    """A model whose forward pass waits for the test, holding the worker's thread."""

    model_id = "blocker"
    batchable = True

    def __init__(self) -> None:
        self.release = threading.Event()

    def encode(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        self.release.wait(timeout=10)
        return [np.zeros(1, np.float32) for _ in windows]


async def _speaker_run(*, cancel_first_step: bool) -> SpeakerStage:
    async with InferenceWorker(name="test") as worker:
        stage = SpeakerStage(stream="mic", segmenter=BandSegmenter(), embedder=BandEmbedder(),
                             worker=worker, options=OPTIONS, live=True, arrivals=ArrivalLog())
        audio = voice(4.0, pitch_hz=LOW)
        stage.on_start(SegmentStart(0, 0))
        stage.on_audio(SegmentAudio(0, 0, audio))
        if cancel_first_step:
            blocker = Blocker()
            held = asyncio.ensure_future(worker.encode(blocker, audio[:10],
                                                       priority=PRIORITY_CAPTIONS))
            await asyncio.sleep(0.05)  # the blocker runs; the step's passes queue behind it
            step = asyncio.ensure_future(stage.step())
            await asyncio.sleep(0.05)
            assert stage.end_supersedes_step()
            step.cancel()
            await asyncio.wait([step])
            blocker.release.set()
            await held
        await stage.on_end(SegmentEnd(0, len(audio), False))
        return stage


async def test_a_cancelled_speaker_step_leaves_the_stage_as_it_was() -> None:
    cancelled = await _speaker_run(cancel_first_step=True)
    fresh = await _speaker_run(cancel_first_step=False)
    assert not cancelled.end_supersedes_step()
    for stage in (cancelled, fresh):
        assert stage.steps == 1  # only the last pass ran
    assert cancelled.counters() == fresh.counters()
    assert cancelled.clustering.labels == fresh.clustering.labels


async def test_a_speakers_label_is_settled_once_its_lead_outruns_what_is_left() -> None:
    async with InferenceWorker(name="test") as worker:
        stage = SpeakerStage(stream="mic", segmenter=BandSegmenter(), embedder=BandEmbedder(),
                             worker=worker, options=OPTIONS, live=True, arrivals=ArrivalLog())
        audio = voice(4.0, pitch_hz=LOW)

        def final(start: float, end: float) -> CaptionFinal:
            return CaptionFinal(stream="mic", start=start, end=end, segment=0, text="x")

        stage.on_start(SegmentStart(0, 0))
        assert not stage.settled(final(0.0, 4.0))  # nothing analysed yet
        stage.on_audio(SegmentAudio(0, 0, audio))
        await stage.step()  # frames released up to 4 s - latency_s
        # 3.5 s of one voice against at most latency_s + merge_gap_s still to come.
        assert stage.settled(final(0.0, 4.0))
        assert stage.annotate(final(0.0, 4.0)).speaker == "S1"
        # The last second: 0.5 s heard against 0.7 s that could still go to another voice.
        assert not stage.settled(final(3.0, 4.0))
        # Another stream's final: nothing to wait for.
        assert stage.settled(CaptionFinal(stream="other", start=3.0, end=4.0, segment=0,
                                          text="x"))
        await stage.on_end(SegmentEnd(0, len(audio), False))
        assert stage.annotate(final(3.0, 4.0)).speaker == "S1"


class LabelOnly(SegmentEcho):
    """An annotator with annotate() alone (no settled()): its events wait for its close."""

    name = "label-only"

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        return []

    def annotate(self, event: Event) -> Event:
        return labelled(event, "Ann")


@pytest.mark.parametrize("live", [True, False])
async def test_an_annotator_without_settled_still_annotates(live: bool) -> None:
    _, events = await run([SegmentEcho, LabelOnly], live=live)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert finals
    assert all(f.speaker == "Ann" for f in finals)


async def test_a_final_is_not_settled_while_diarization_is_off() -> None:
    """Switched off during a close and back on before the speakers stage's last pass: the
    final must wait for that pass, which labels it."""
    async with InferenceWorker(name="test") as worker:
        switch = DiarizationSwitch()
        stage = SpeakerStage(stream="mic", segmenter=BandSegmenter(), embedder=BandEmbedder(),
                             worker=worker, options=OPTIONS, live=True, arrivals=ArrivalLog(),
                             switch=switch)
        audio = voice(4.0, pitch_hz=LOW)
        stage.on_start(SegmentStart(0, 0))
        stage.on_audio(SegmentAudio(0, 0, audio))
        await stage.step()
        final = CaptionFinal(stream="mic", start=0.0, end=4.0, segment=0, text="x")
        assert stage.settled(final)
        switch.set(False)  # a control command while the caption stage closes the segment
        assert not stage.settled(final)
        switch.set(True)  # back on before the speakers stage's last pass
        await stage.on_end(SegmentEnd(0, len(audio), False))
        assert stage.annotate(final).speaker == "S1"


class Journal(SegmentEcho):
    """Writes its calls to a shared log as (stage, call, segment), and a partial per step
    on the segment it has open."""

    name = "journal"

    def __init__(self, ctx: StageContext, log: list[tuple[str, str, int]]) -> None:
        super().__init__(ctx)
        self.log = log
        self.open: int | None = None

    def on_start(self, start: SegmentStart) -> None:
        super().on_start(start)
        self.open = start.segment
        self.log.append((self.name, "start", start.segment))

    def on_audio(self, audio: SegmentAudio) -> None:
        super().on_audio(audio)
        self.log.append((self.name, "audio", audio.segment))

    async def step(self) -> list[Event]:
        if self.open is None:
            return []
        self.log.append((self.name, "step", self.open))
        return [CaptionPartial(stream=self.stream, start=0.0, end=0.0, segment=self.open,
                               text="p")]

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        self.log.append((self.name, "end", end.segment))
        self.open = None
        events = await super().on_end(end)
        self.log.append((self.name, "closed", end.segment))
        return events


class SlowLabel(Journal):
    """An annotator that closes slowly (the speakers stage's last pass) and labels a final
    with the segment it has open, so a label from the next segment shows."""

    name = "slow-label"

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        self.log.append((self.name, "end", end.segment))
        # Closes once the other stage has stepped on the next segment (at most 1 s): the
        # engine must let it, whatever the machine's speed.
        for _ in range(100):
            if ("journal", "step", end.segment + 1) in self.log:
                break
            await asyncio.sleep(0.01)
        self.log.append((self.name, "closed", end.segment))
        return []  # `open` stays: the segment it last heard of

    def annotate(self, event: Event) -> Event:
        return labelled(event, f"seg{self.open}")

    def settled(self, event: Event) -> bool:
        return False


async def test_a_stage_steps_on_the_next_segment_while_a_slower_one_closes_the_last() -> None:
    log: list[tuple[str, str, int]] = []
    engines: list[Engine] = []
    events = await asyncio.wait_for(run_engine(
        ListSource({"a": np.tile(sample(), 2)}, pace_s=0.01), live=True, engine_ref=engines,
        stages=[lambda ctx: Journal(ctx, log), lambda ctx: SlowLabel(ctx, log)]), timeout=60)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert len(finals) == 4
    # The slow close ran beside the VAD: the fast stage started the next segment, and
    # stepped on it, before the slow stage had closed the last one.
    overlapped = 0
    for k in range(len(finals) - 1):
        slow_closed = log.index(("slow-label", "closed", k))
        overlapped += log.index(("journal", "start", k + 1)) < slow_closed \
            and log.index(("journal", "step", k + 1)) < slow_closed
    assert overlapped == len(finals) - 1
    # Each stage still saw its own calls in order: nothing of k + 1 before it closed k.
    for name in ("journal", "slow-label"):
        own = [(call, seg) for stage, call, seg in log if stage == name]
        for k in range(len(finals) - 1):
            assert own.index(("closed", k)) < own.index(("start", k + 1))
            assert all(seg <= k for _, seg in own[:own.index(("closed", k))])
    # The annotator labelled each final before it heard of the next segment...
    assert [f.speaker for f in finals] == [f"seg{k}" for k in range(4)]
    # ...and every event of a segment came out before any of the next one.
    segments = [getattr(e, "segment", None) for e in events
                if isinstance(e, (SpeechStarted, CaptionPartial, SpeechEnded, CaptionFinal))]
    assert segments == sorted(segments)
    assert engines[0].streams["a"].held_overflow == 0


class Detaching(Journal):
    """Takes its segment when on_end is called; the rest of its close waits until the
    engine has given it the next segment (at most 1 s)."""

    name = "detaching"
    takes_segment_at_end = True

    def on_end(self, end: SegmentEnd) -> Coroutine[Any, Any, list[Event]]:
        self.log.append((self.name, "end", end.segment))
        self.open = None
        return self._finish(end, super(Journal, self).on_end(end))

    async def _finish(self, end: SegmentEnd,
                      final: Coroutine[Any, Any, list[Event]]) -> list[Event]:
        for _ in range(100):
            if (self.name, "start", end.segment + 1) in self.log:
                break
            await asyncio.sleep(0.01)
        self.log.append((self.name, "closed", end.segment))
        return await final


async def test_a_stage_that_takes_its_segment_at_end_hears_the_next_while_it_closes() -> None:
    log: list[tuple[str, str, int]] = []
    events = await asyncio.wait_for(run_engine(
        ListSource({"a": np.tile(sample(), 2)}, pace_s=0.01), live=True,
        stages=[lambda ctx: Detaching(ctx, log)]), timeout=60)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert len(finals) == 4
    for k in range(3):
        assert log.index(("detaching", "start", k + 1)) < log.index(("detaching", "closed", k))
    # Each final counts its own segment's samples only, and the order holds.
    pushed: dict[int, int] = {}
    for out in events:
        if isinstance(out, CaptionFinal):
            pushed[out.segment] = int(out.text)
    assert all(n > 0 for n in pushed.values())
    segments = [getattr(e, "segment", None) for e in events
                if isinstance(e, (SpeechStarted, CaptionPartial, SpeechEnded, CaptionFinal))]
    assert segments == sorted(segments)


class Burst(Journal):
    """Twenty partials per step on the segment it has open."""

    name = "burst"

    def __init__(self, ctx: StageContext, log: list[tuple[str, str, int]]) -> None:
        super().__init__(ctx, log)
        self.partials = 0

    async def step(self) -> list[Event]:
        events = await super().step()
        events *= 20
        self.partials += len(events)
        return events


class SlowClose(SlowLabel):
    name = "slow-close"

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await asyncio.sleep(0.5)
        return []


async def test_the_next_segments_events_held_for_a_close_are_bounded_and_keep_their_order(
        ) -> None:
    log: list[tuple[str, str, int]] = []
    made: list[Burst] = []
    engines: list[Engine] = []

    def burst(ctx: StageContext) -> Burst:
        made.append(Burst(ctx, log))
        return made[-1]

    events = await asyncio.wait_for(run_engine(
        ListSource({"a": np.tile(sample(), 2)}, pace_s=0.01), live=True, engine_ref=engines,
        stages=[burst, lambda ctx: SlowClose(ctx, log)]), timeout=60)
    state = engines[0].streams["a"]
    # More than MAX_HELD_EVENTS came while a close ran: their publishers waited, none was
    # lost and none overtook the close.
    assert made[0].partials > 2 * MAX_HELD_EVENTS
    assert sum(isinstance(e, CaptionPartial) for e in events) == made[0].partials
    segments = [getattr(e, "segment", None) for e in events
                if isinstance(e, (SpeechStarted, CaptionPartial, SpeechEnded, CaptionFinal))]
    assert segments == sorted(segments)
    assert state.held_overflow == 0
    assert not state.after_close
class CountedClose(SegmentEcho):
    """Counts the segments it has closed (a stage counter), and closes a little slowly."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.closed = 0

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await asyncio.sleep(0.05)
        self.closed += 1
        return await super().on_end(end)

    def counters(self) -> dict[str, int]:
        return {"echo_closed": self.closed}


@pytest.mark.parametrize("live", [False, True])
async def test_a_streams_last_stats_count_its_last_close(live: bool) -> None:
    # Live, the last close runs beside the VAD: the last stats must still wait for it.
    _, events = await run([CountedClose], live=live)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    last = [e for e in events if isinstance(e, Stats)][-1]
    assert len(finals) >= 2
    assert last.counters["echo_closed"] == len(finals) == last.counters["segments"]
    assert events.index(last) > events.index(finals[-1])


class Listener(SegmentEcho):
    """Hears every block (an AudioListener, as the refine stage) and, as an annotator,
    closes the segment that ends after `after` only once the stream has been read to its
    end (or after 2 s)."""

    name = "listener"

    def __init__(self, ctx: StageContext, engines: list[Engine], total: int,
                 after: int) -> None:
        super().__init__(ctx)
        self.engines, self.total, self.after = engines, total, after
        self.heard: list[int] = []  # block starts
        self.closing_from: int | None = None  # the last block heard when a close began

    def on_block(self, block: AudioBlock) -> None:
        self.heard.append(block.start)

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        if end.end < self.after:
            return []
        self.closing_from = self.heard[-1]
        for _ in range(200):
            if self.engines[0].streams["a"].last_end >= self.total:
                break
            await asyncio.sleep(0.01)
        return []

    def annotate(self, event: Event) -> Event:
        return event


async def test_the_blocks_kept_for_a_listener_still_closing_are_bounded() -> None:
    audio = np.concatenate([sample(), np.zeros(40 * SAMPLE_RATE, np.float32)])
    engines: list[Engine] = []
    listeners: list[Listener] = []

    def listener(ctx: StageContext) -> Listener:
        listeners.append(Listener(ctx, engines, len(audio), len(sample()) // 2))
        return listeners[-1]

    events = await asyncio.wait_for(run_engine(
        ListSource({"a": audio}, pace_s=0.001), live=True, engine_ref=engines,
        stages=[SegmentEcho, listener]), timeout=60)
    last = [e for e in events if isinstance(e, Stats)][-1]
    assert last.counters["stream_dropped_blocks"] == 0
    heard = listeners[0].heard
    assert heard == sorted(heard)
    # 40 s of silence came while the last segment closed: the listener heard the blocks
    # before that close, then the first BLOCK_QUEUE_SIZE of those read meanwhile.
    closing_from = listeners[0].closing_from
    assert closing_from is not None
    assert len([s for s in heard if s > closing_from]) == BLOCK_QUEUE_SIZE


class TimedPartials(Journal):
    """A partial per step that ends where the audio it heard ends (as the caption stage's)."""

    name = "timed"

    def __init__(self, ctx: StageContext, log: list[tuple[str, str, int]]) -> None:
        super().__init__(ctx, log)
        self.heard_to = 0

    def on_audio(self, audio: SegmentAudio) -> None:
        super().on_audio(audio)
        self.heard_to = audio.start + len(audio.samples)

    async def step(self) -> list[Event]:
        if self.open is None:
            return []
        return [CaptionPartial(stream=self.stream, start=0.0, end=self.heard_to / SAMPLE_RATE,
                               segment=self.open, text="p")]


async def test_a_partial_held_while_the_last_segment_closes_is_timed_when_published() -> None:
    log: list[tuple[str, str, int]] = []
    engines: list[Engine] = []
    events = await asyncio.wait_for(run_engine(
        ListSource({"a": np.tile(sample(), 2)}, pace_s=0.01), live=True, engine_ref=engines,
        stages=[lambda ctx: TimedPartials(ctx, log), lambda ctx: SlowClose(ctx, log)]),
        timeout=60)
    state = engines[0].streams["a"]
    partials = [e for e in events if isinstance(e, CaptionPartial)]
    assert len(state.partial_latency) == len(partials)
    # Held behind the 0.5 s close: a reader got the next segment's first partials late.
    assert max(state.partial_latency.values()) > 0.3
    stats = [e for e in events if isinstance(e, Stats)][-1]
    assert stats.caption_latency_p95_s == state.partial_latency.get(95)


class Clocked(Journal):
    """Closes slowly (4 s); notes when it heard of each segment, whether a close was still
    running then, and when it first stepped on it."""

    name = "clocked"

    def __init__(self, ctx: StageContext, engines: list[Engine]) -> None:
        super().__init__(ctx, [])
        self.engines = engines
        self.started_at: dict[int, float] = {}
        self.during_close: dict[int, bool] = {}
        self.first_step_at: dict[int, float] = {}

    def on_start(self, start: SegmentStart) -> None:
        super().on_start(start)
        self.started_at[start.segment] = time.monotonic()
        self.during_close[start.segment] = self.engines[0].streams[self.stream].closing \
            is not None

    async def step(self) -> list[Event]:
        if self.open is not None:
            self.first_step_at.setdefault(self.open, time.monotonic())
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await asyncio.sleep(4.0)  # longer than the pause between the sample's sentences
        return await super().on_end(end)


async def test_a_stage_steps_as_soon_as_it_hears_the_next_segment() -> None:
    """Handed the next segment's opening audio after its own close, a stage steps on it
    then, not a block later (when that block could make a second step due: merged)."""
    made: list[Clocked] = []
    engines: list[Engine] = []

    def clocked(ctx: StageContext) -> Clocked:
        made.append(Clocked(ctx, engines))
        return made[-1]

    await asyncio.wait_for(run_engine(
        ListSource({"a": sample()}, pace_s=0.15), live=True,  # a block every 0.15 s
        engine_ref=engines, stages=[clocked]), timeout=60)
    stage = made[0]
    assert len(stage.started_at) == 2
    # Segment 1 opened while the stage still closed segment 0: it heard of it at the end of
    # that close, and stepped on it in the same turn of the loop.
    assert stage.during_close[1]
    assert stage.first_step_at[1] - stage.started_at[1] < 0.05  # a block later: up to 0.15
