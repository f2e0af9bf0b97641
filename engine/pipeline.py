"""The engine: sources -> VAD -> task stages -> worker -> events -> bus.

    engine = Engine(sources=[...], stages=[caption_stage_factory], worker=..., options=...)
    printer = engine.subscribe("printer")          # before run()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(PrinterSink().consume(printer))
        await engine.run()                          # returns when every source has ended

A source yields AudioBlocks tagged with a stream id (a file or a microphone has one stream;
an MQTT satellite hub has one per site). The engine gives each stream, on its first block, a
bounded block queue and a processing task that runs the VAD and the task stages. Live,
readers never wait: when processing of one stream stalls and its queue is full, that
stream's blocks are dropped and counted (`stream_dropped_blocks`), leaving a gap on its clock,
while the other streams of the same source go on. Files and `--fast` wait instead (lossless).

Order of events, per stream (the contract in the README): `speech_started`, then the
segment's partials (and live keyword hits), `speech_ended`, `caption_final`, and only then
the annotations of that segment (events whose class sets `follows_final`, e.g. its
translations), even when a background stage finishes one before the final is out. A
stream its source ends while the run goes on (an evicted satellite) ends with
`stream_ended`, after all of its other events.

Live, a segment closes beside the VAD: while the slow stages still close segment N (the
speakers stage's last pass takes up to a second on a CPU), a stage that has closed it
already gets segment N+1's audio and steps on it, so the captions of N+1 keep their pace.
Each stage still sees its own calls in order (on_end of N before on_start of N+1), and the
events of N+1 wait until every event of N is out. A second end waits for the first close.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from harken.engine.audio import AudioBlock, level_dbfs
from harken.engine.bus import DEFAULT_QUEUE_SIZE, EventBus, Subscription
from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    Level,
    SpeechEnded,
    SpeechStarted,
    Stats,
    StreamEnded,
)
from harken.engine.memory import HEAP_TRIM_INTERVAL_S, HeapTrimmer
from harken.engine.metrics import ArrivalLog, Percentiles
from harken.engine.stages.base import (
    Annotator,
    AudioListener,
    EndSupersedesStep,
    Stage,
    StageContext,
    StageFactory,
    TakesSegmentAtEnd,
)
from harken.engine.vad import (
    SegmentAudio,
    SegmentEnd,
    SegmentStart,
    VadOptions,
    VadOutput,
    VadSegmenter,
    preload_vad,
)
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE

LOCAL = "local"  # a pause/resume by the person at this machine (terminal app, CLI)
REMOTE = "remote"  # a pause/resume from the network (the MQTT control topic)
BLOCK_QUEUE_SIZE = 100  # blocks (~10 s of 0.1 s blocks) between a reader and its processor
MAX_HELD_EVENTS = 64  # annotations per stream waiting for their segments' finals, at most
STATS_INTERVAL_S = 5.0  # stream-clock seconds between stats events


class AudioSource(Protocol):
    """An opened-by-`async with` producer of 16 kHz mono blocks (engine/sources/file.py)."""

    @property
    def description(self) -> str: ...

    def blocks(self) -> AsyncIterator[AudioBlock]: ...


class OpenableSource(AudioSource, AbstractAsyncContextManager[object], Protocol):
    pass


class Pausable(Protocol):
    """What a runtime control can pause and resume (Engine has it): the TUI's space key, the
    MQTT control topic. `by` says who asks (LOCAL or REMOTE): a remote resume must not lift
    a pause made at the machine itself."""

    @property
    def paused(self) -> bool: ...

    def pause(self, *, by: str = ...) -> None: ...

    def resume(self, *, by: str = ...) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    vad: VadOptions = field(default_factory=VadOptions)
    #: Live: stages may skip stale partial work under load. Off for files/--fast, where
    #: every step runs in order so that results never depend on timing.
    live: bool = False
    levels: bool = True
    stats_interval_s: float = STATS_INTERVAL_S
    #: Threads that run the streams' VADs off the event loop (0: on the loop). With many
    #: streams the VADs (silero's network above all) are most of the loop's work; in a pool
    #: they use other cores, since onnxruntime and numpy release the GIL.
    vad_threads: int = 0
    #: s between glibc heap trims while the engine runs (engine/memory.py); 0: none.
    heap_trim_interval_s: float = HEAP_TRIM_INTERVAL_S


@dataclass
class StreamState:
    id: str
    stages: list[Stage]
    arrivals: ArrivalLog
    queue: asyncio.Queue[AudioBlock | None]
    audio_samples: int = 0
    paused_samples: int = 0
    segments: int = 0
    last_end: int = 0
    segment_starts: dict[int, int] = field(default_factory=dict)
    dropped_blocks: int = 0  # live: blocks dropped because this stream's queue was full
    #: Segments started whose end events are not all published yet, with the annotations
    #: of each held until then (see the module docstring).
    held: dict[int, list[Event]] = field(default_factory=dict)
    held_overflow: int = 0  # annotations published before their final: too many were held
    releasing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one release at a time
    task: asyncio.Task[None] | None = None
    ended_by_source: bool = False  # its source ended it while the run went on
    publishers: int = 0  # its tasks still publishing: the processor and background forwarders
    #: Live: each stage's step in flight (by stage index), at most one per stage.
    stepping: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    #: Live: the segment close in flight beside the VAD (see the module docstring), the
    #: VAD outputs that wait for each stage still closing it (by stage index; bounded: a
    #: second end waits for the close), with the blocks for a listener among them (at most
    #: BLOCK_QUEUE_SIZE), and the next segment's events held until the close is out (at
    #: most MAX_HELD_EVENTS; beyond, their publishers wait for it).
    closing: asyncio.Task[None] | None = None
    steps: asyncio.TaskGroup | None = None  # live: the group the stream's steps run in
    waiting: dict[int, list[VadOutput | AudioBlock]] = field(default_factory=dict)
    after_close: list[Event] = field(default_factory=list)
    superseded_steps: int = 0  # steps in flight cancelled by a segment end (EndSupersedesStep)
    #: From the end of a segment's audio arriving to its caption_final on the bus: what a
    #: reader waits for (the caption stage's own figure stops before the other stages close
    #: the segment, e.g. the speaker label). Segments that ended at a pause; a VAD split is
    #: decided up to split_search_s after its split point, so its finals are kept apart.
    final_latency: Percentiles = field(default_factory=Percentiles)
    split_final_latency: Percentiles = field(default_factory=Percentiles)
    #: From the end of a partial's audio arriving to the partial on the bus: a partial of
    #: the next segment held while the last one closes counts its wait too.
    partial_latency: Percentiles = field(default_factory=Percentiles)


def _settled(annotator: Annotator, event: Event) -> bool:
    """Whether `annotator` already gives `event` the annotation its close would (Annotator)."""
    settled = getattr(annotator, "settled", None)
    return bool(settled(event)) if callable(settled) else False


class Engine:
    def __init__(self, *, sources: Sequence[OpenableSource], stages: Sequence[StageFactory],
                 worker: InferenceWorker, options: EngineOptions) -> None:
        if not sources:
            raise ValueError("the engine needs at least one source")
        if not stages:
            raise ValueError("the engine needs at least one task stage")
        self.options = options
        self.worker = worker
        self.bus = EventBus(lossless=not options.live)
        self._pausers: set[str] = set()
        self._audio_samples = 0  # every stream's, ended ones too
        self.streams_ended = 0  # streams their source ended while the run went on
        self._sources = list(sources)
        self._stage_factories = list(stages)
        self._streams: dict[str, StreamState] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._vad_pool: ThreadPoolExecutor | None = None
        self._stopping = asyncio.Event()
        self.heap = HeapTrimmer(interval_s=options.heap_trim_interval_s) \
            if options.heap_trim_interval_s > 0 else None

    def subscribe(self, name: str, *, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        return self.bus.subscribe(name, maxsize=maxsize)

    @property
    def paused(self) -> bool:
        return bool(self._pausers)

    @property
    def paused_by(self) -> frozenset[str]:
        """Who paused: LOCAL (the person at this machine) and/or REMOTE (a control topic)."""
        return frozenset(self._pausers)

    def pause(self, *, by: str = LOCAL) -> None:
        """Stop listening: audio still flows (the clock stays true) but is treated as silence."""
        self._pausers.add(by)

    def resume(self, *, by: str = LOCAL) -> None:
        """A local resume lifts every pause; a remote one only a remote pause, so that
        anyone on the broker cannot undo what the person at this machine paused."""
        if by == LOCAL:
            self._pausers.clear()
        else:
            self._pausers.discard(by)

    @property
    def streams(self) -> dict[str, StreamState]:
        return dict(self._streams)

    async def run(self) -> None:
        """Runs every source to its end; closes the bus (ending the sinks) in any case."""
        if self.options.vad_threads > 0:
            self._vad_pool = ThreadPoolExecutor(max_workers=self.options.vad_threads,
                                                thread_name_prefix="vad")
        trimmer = None
        if self.heap is not None:
            # A run lasts days: without it, glibc's freed-but-kept memory grows (RSS up
            # ~100 MB in 12 min of the soak while the memory in use stayed flat).
            trimmer = asyncio.create_task(self.heap.run(), name="heap-trim")
        try:
            await asyncio.to_thread(preload_vad, self.options.vad)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for i, source in enumerate(self._sources):
                    tg.create_task(self._read(source), name=f"source-{i}")
        finally:
            self._tg = None
            if self._vad_pool is not None:
                await asyncio.to_thread(self._vad_pool.shutdown, wait=True)
                self._vad_pool = None
            if trimmer is not None:
                trimmer.cancel()
                await asyncio.wait([trimmer])
            await self.bus.close()

    def stop(self) -> None:
        """End every source now, as if its input had ended: the open segments are finished
        (their finals made and written) before run() returns."""
        self._stopping.set()

    async def _feed(self, vad: VadSegmenter, block: AudioBlock) -> list[VadOutput]:
        """One block through a stream's VAD: in the pool if there is one. A stream awaits
        each block before the next, so one segmenter never runs on two threads at once."""
        if self._vad_pool is None:
            return vad.feed(block)
        return await asyncio.get_running_loop().run_in_executor(self._vad_pool, vad.feed,
                                                                block)

    def _stream(self, stream_id: str) -> StreamState:
        state = self._streams.get(stream_id)
        if state is not None:
            return state
        if self._tg is None:
            raise RuntimeError("Engine.run() is not running")
        arrivals = ArrivalLog()
        ctx = StageContext(stream=stream_id, worker=self.worker, arrivals=arrivals,
                           live=self.options.live)
        state = StreamState(id=stream_id, stages=[make(ctx) for make in self._stage_factories],
                            arrivals=arrivals, queue=asyncio.Queue(maxsize=BLOCK_QUEUE_SIZE))
        self._streams[stream_id] = state
        state.publishers = 1
        state.task = self._tg.create_task(self._process(state), name=f"stream-{stream_id}")
        for stage in state.stages:
            events = stage.background()
            if events is not None:
                state.publishers += 1
                self._tg.create_task(self._forward(state, events),
                                     name=f"{stage.name}-{stream_id}")
        return state

    async def _forward(self, state: StreamState, events: AsyncIterator[Event]) -> None:
        async for event in events:
            await self._publish(state, event)
        # A background task outlives the stream's last stats: count its late work too.
        await self.bus.publish(self._stats(state))
        await self._published_all(state)

    async def _published_all(self, state: StreamState) -> None:
        """One of the stream's publishing tasks is done; after the last, a stream its source
        ended gets its StreamEnded (sinks forget the site: MQTT clears its retained configs),
        unless the site already came back as a new stream of the same id."""
        state.publishers -= 1
        if state.publishers == 0 and state.ended_by_source and state.id not in self._streams:
            t = state.last_end / SAMPLE_RATE
            await self.bus.publish(StreamEnded(stream=state.id, start=t, end=t))

    async def _read(self, source: OpenableSource) -> None:
        mine: list[StreamState] = []
        async with source:
            pump = asyncio.create_task(self._pump(source, mine), name="pump")
            stopping = asyncio.create_task(self._stopping.wait(), name="stop-wait")
            try:
                # stop() ends the input at once, even while the source waits for audio (a
                # quiet satellite); one task per source, nothing added per block.
                await asyncio.wait({pump, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                pump.cancel()  # nothing when it has ended
                await asyncio.wait({pump})
        failure = None if pump.cancelled() else pump.result()
        # Not in a `finally`: when the run is cancelled the processors are cancelled too, and
        # a put into a full queue that nobody drains would hang the shutdown.
        for state in mine:
            await state.queue.put(None)
        if failure is not None:
            # A lost device must not lose the speech already captured: let the streams
            # finish (open segments end, finals are made), then fail the run.
            tasks = [state.task for state in mine if state.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            raise failure

    async def _pump(self, source: OpenableSource, mine: list[StreamState]
                    ) -> Exception | None:
        """The source's blocks into their streams' queues, to its end; its failure, if any,
        returned to be raised once the audio already read is processed."""
        try:
            async for block in source.blocks():
                state = self._stream(block.stream)
                if state not in mine:
                    mine.append(state)
                state.arrivals.record(block.end, time.monotonic())
                if not block.samples.size:
                    pass  # an empty last block only ends its stream
                elif not self.options.live:
                    await state.queue.put(block)  # lossless: the reader waits
                elif state.queue.full():
                    # This stream's processing stalled: lose its audio (a gap on its
                    # clock), not the other streams' that this reader also carries.
                    state.dropped_blocks += 1
                else:
                    state.queue.put_nowait(block)
                if block.last:
                    # The source ended this stream (an idle satellite): it finishes and
                    # its state is freed; a later block with its id starts a new stream.
                    mine.remove(state)
                    del self._streams[state.id]
                    state.ended_by_source = True
                    self.streams_ended += 1
                    if self.options.live and state.queue.full():
                        state.queue.get_nowait()  # the end must get in: lose a block
                        state.dropped_blocks += 1
                    await state.queue.put(None)
        except Exception as exc:
            return exc
        return None

    async def _process(self, state: StreamState) -> None:
        # Live steps are tasks of this group: an error in one ends the stream as it would
        # in the loop, and none outlives it.
        async with asyncio.TaskGroup() as steps:
            state.steps = steps
            await self._process_blocks(state)

    async def _process_blocks(self, state: StreamState) -> None:
        vad = VadSegmenter(self.options.vad)
        listeners = [(i, stage) for i, stage in enumerate(state.stages)
                     if isinstance(stage, AudioListener)]
        next_stats = self.options.stats_interval_s
        done = False
        while not done:
            # Take everything queued: after slow inference, live stages jump to the newest audio.
            batch = [await state.queue.get()]
            while not state.queue.empty():
                batch.append(state.queue.get_nowait())
            for block in batch:
                if block is None:
                    outputs = vad.flush()
                    done = True
                else:
                    admitted = self._admit(state, block)
                    self._listen(state, listeners, admitted)
                    outputs = await self._feed(vad, admitted)
                    if self.options.levels:
                        await self.bus.publish(Level(
                            stream=state.id, start=block.start / SAMPLE_RATE,
                            end=block.end / SAMPLE_RATE, dbfs=level_dbfs(block.samples),
                            speech=vad.in_speech and not self.paused))
                await self._handle(state, outputs)
                if not self.options.live:
                    await self._step(state)
            if self.options.live and not done:
                self._start_steps(state)
            if state.last_end / SAMPLE_RATE >= next_stats and not done:
                await self.bus.publish(self._stats(state))
                interval = self.options.stats_interval_s
                next_stats = (state.last_end / SAMPLE_RATE // interval + 1) * interval
        await self._closed(state)
        await self._steps_done(state)
        # The stream's last stats, once its last close is out (live, it ran beside the VAD).
        await self.bus.publish(self._stats(state))
        for segment in list(state.held):  # segments the VAD never closed: nothing to wait for
            await self._release(state, segment)
        for stage in state.stages:  # optional hook: lets background() iterators finish
            on_stream_end = getattr(stage, "on_stream_end", None)
            if callable(on_stream_end):
                on_stream_end()
        await self._published_all(state)

    def _admit(self, state: StreamState, block: AudioBlock) -> AudioBlock:
        state.audio_samples += len(block.samples)
        self._audio_samples += len(block.samples)
        state.last_end = block.end
        if not self.paused:
            return block
        # Paused: the VAD hears silence, so an open segment ends and no new one starts.
        state.paused_samples += len(block.samples)
        return AudioBlock(stream=block.stream, start=block.start,
                          samples=np.zeros_like(block.samples))

    async def _step(self, state: StreamState) -> None:
        for stage in state.stages:
            await self._step_stage(state, stage)

    async def _step_stage(self, state: StreamState, stage: Stage, *,
                          after: asyncio.Task[None] | None = None) -> None:
        """`after`: the close in flight when the step began, on the segment after the one
        it closes: the step's events wait for it."""
        for event in await stage.step():
            await self._after_close(state, event, after)

    def _start_steps(self, state: StreamState) -> None:
        """Live: a step for each stage that has none in flight. Not awaited, so the VAD keeps
        up with the audio (a segment's end is seen when it arrives, not after a slow
        speaker pass), and the stages' windows meet in the worker, which runs the most
        urgent first; a stage whose step is still running catches up on its next one."""
        for i in range(len(state.stages)):
            if i not in state.waiting:  # else still closing the last segment
                self._start_step(state, i)

    @staticmethod
    def _steps(state: StreamState) -> asyncio.TaskGroup:
        """The group of the stream's live steps and closes (set while it is processed)."""
        if state.steps is None:
            raise RuntimeError(f"stream {state.id} is not being processed")
        return state.steps

    def _start_step(self, state: StreamState, i: int) -> None:
        """Live: a step for stage `i` unless one is in flight."""
        task = state.stepping.get(i)
        if task is None or task.done():
            stage = state.stages[i]
            state.stepping[i] = self._steps(state).create_task(
                self._step_stage(state, stage, after=state.closing),
                name=f"{stage.name}-{state.id}")

    async def _steps_done(self, state: StreamState) -> None:
        """Waits for the steps in flight (a failed one fails the stream via its group)."""
        running = [task for task in state.stepping.values() if not task.done()]
        if running:
            await asyncio.wait(running)

    async def _handle(self, state: StreamState, outputs: list[VadOutput]) -> None:
        for out in outputs:
            if isinstance(out, SegmentStart):
                state.segments += 1
                state.segment_starts[out.segment] = out.start
                state.held[out.segment] = []
                self._deliver(state, out)
                t = out.start / SAMPLE_RATE
                started = SpeechStarted(stream=state.id, start=t, end=t, segment=out.segment)
                await self._after_close(state, started, state.closing)
            elif isinstance(out, SegmentAudio):
                self._deliver(state, out)
            elif self.options.live:
                await self._closed(state)  # one close at a time
                state.waiting = {i: [] for i in range(len(state.stages))}
                state.closing = self._steps(state).create_task(self._close_beside(state, out),
                                                  name=f"close-{state.id}")
            else:
                # Bring deterministic stages up to date before the segment is cut at `end`.
                await self._step(state)
                await self._close(state, out)
                await self._release(state, out.segment)

    def _deliver(self, state: StreamState, out: SegmentStart | SegmentAudio) -> None:
        """Gives a VAD output to every stage, or keeps it for one still closing a segment."""
        for i, stage in enumerate(state.stages):
            waiting = state.waiting.get(i)
            if waiting is not None:
                waiting.append(out)
            elif isinstance(out, SegmentStart):
                stage.on_start(out)
            else:
                stage.on_audio(out)

    def _listen(self, state: StreamState, listeners: Sequence[tuple[int, AudioListener]],
                block: AudioBlock) -> None:
        """Gives a block to the stages that hear every block (AudioListener), or keeps it
        with the VAD outputs for one still closing a segment: it must hear the stream as
        the VAD had read it at that end, not further (the refiner's after-padding stops at
        the next segment's start, which it hears of only once it has closed the segment)."""
        for i, listener in listeners:
            waiting = state.waiting.get(i)
            if waiting is None:
                listener.on_block(block)
            elif sum(isinstance(out, AudioBlock) for out in waiting) < BLOCK_QUEUE_SIZE:
                waiting.append(block)
            # else: bounded, as a stalled stream's queue: the listener hears a gap

    def _reopen(self, state: StreamState, i: int) -> None:
        """Stage `i` has closed the segment: it gets what the VAD gave meanwhile, in order,
        and steps on it at once (waiting for the next block would merge the step that the
        segment's opening audio made due with the one the next block makes due)."""
        stage = state.stages[i]
        heard = False
        for out in state.waiting.pop(i, []):
            if isinstance(out, AudioBlock):
                if isinstance(stage, AudioListener):
                    stage.on_block(out)
            elif isinstance(out, SegmentStart):
                stage.on_start(out)
                heard = True
            elif isinstance(out, SegmentAudio):
                stage.on_audio(out)
                heard = True
        if heard and self.options.live:
            self._start_step(state, i)

    async def _after_close(self, state: StreamState, event: Event,
                           after: asyncio.Task[None] | None) -> None:
        """Publishes an event, or holds it until the close `after` is out if that is still
        in flight (it is then of the segment after the one closing)."""
        if after is not None and after is state.closing:
            if len(state.after_close) < MAX_HELD_EVENTS:
                state.after_close.append(event)
                return
            # Bounded: the publisher waits for the close (which publishes what is held).
            await asyncio.wait([after])
        await self._publish(state, event)

    async def _close_beside(self, state: StreamState, end: SegmentEnd) -> None:
        """Live: closes the segment while the VAD goes on, then lets the stages still closing
        it have the next segment's audio and publishes the events held for it."""
        await self._close(state, end)
        await self._release(state, end.segment)
        for i in list(state.waiting):
            self._reopen(state, i)
        while state.after_close:  # steps may add to it meanwhile
            await self._publish(state, state.after_close.pop(0))
        state.closing = None

    async def _closed(self, state: StreamState) -> None:
        """Waits for the close in flight, if any (its failure fails the stream's group)."""
        if state.closing is not None:
            await asyncio.wait([state.closing])

    async def _close(self, state: StreamState, end: SegmentEnd) -> None:
        """Every stage closes the segment, in stage order, each once its own step in flight
        is done: the caption final is decoded while a slower stage's step still runs.
        speech_ended goes out once every step is done (their partials and keyword hits come
        before it), then the end events in stage order. An event goes out as soon as no
        stage still to close the segment could change its annotation: a caption final need
        not wait for the speakers stage's last pass when the speaker who talked most in it
        is already decided."""
        arrived = state.arrivals.time_of(end.end)
        # The steps of this segment; live, a stage that has closed it steps on the next.
        in_flight = {i: task for i, task in state.stepping.items() if not task.done()}
        for i, stage in enumerate(state.stages):
            step = in_flight.get(i)
            if step is not None and not step.done() and isinstance(stage, EndSupersedesStep) \
                    and stage.end_supersedes_step():
                step.cancel()
                state.superseded_steps += 1
        async with asyncio.TaskGroup() as closing:
            closes: list[asyncio.Task[list[Event]]] = []
            for i, stage in enumerate(state.stages):
                closes.append(closing.create_task(
                    self._close_stage(state, i, end, closes[-1] if closes else None,
                                      in_flight.get(i)),
                    name=f"{stage.name}-close-{state.id}"))
            if in_flight:
                await asyncio.wait(in_flight.values())
            start = state.segment_starts.pop(end.segment, end.end)
            await self.bus.publish(SpeechEnded(stream=state.id, start=start / SAMPLE_RATE,
                                               end=end.end / SAMPLE_RATE, segment=end.segment))
            ended: collections.deque[Event] = collections.deque()
            for i, close in enumerate(closes):
                ended.extend(await close)
                later = [s for s in state.stages[i + 1:] if isinstance(s, Annotator)]
                while ended and all(_settled(s, ended[0]) for s in later):
                    event = ended.popleft()
                    await self._publish(state, self._annotate(state, event))
                    if isinstance(event, CaptionFinal) and arrived is not None:
                        kept = state.split_final_latency if end.split else state.final_latency
                        kept.add(time.monotonic() - arrived)

    async def _close_stage(self, state: StreamState, i: int, end: SegmentEnd,
                           previous: asyncio.Task[list[Event]] | None,
                           step: asyncio.Task[None] | None) -> list[Event]:
        """Stage `i`'s end events, once the stage before it has closed the segment (e.g.
        the refine stage takes the caption stage's closed segment) and its own step in
        flight is done. Live, a stage that annotates no other stage's events then gets the
        next segment's audio at once (an annotator only once the segment's events are out,
        since annotate() reads what the segment left)."""
        waits = [task for task in (previous, step) if task is not None]
        if waits:
            await asyncio.wait(waits)
        stage = state.stages[i]
        ending = stage.on_end(end)
        annotator = isinstance(stage, Annotator)
        if not annotator and isinstance(stage, TakesSegmentAtEnd) and stage.takes_segment_at_end:
            self._reopen(state, i)  # it has taken the segment already
        events = await ending
        if not annotator:
            self._reopen(state, i)
        return events

    async def _publish(self, state: StreamState, event: Event) -> None:
        """Publishes `event`, or holds it if it annotates a segment whose final is not out."""
        if isinstance(event, CaptionPartial):
            arrived = state.arrivals.time_of(round(event.end * SAMPLE_RATE))
            if arrived is not None:
                state.partial_latency.add(time.monotonic() - arrived)
        segment = getattr(event, "segment", None)
        held = state.held.get(segment) if isinstance(segment, int) else None
        if held is None or not event.follows_final or not isinstance(segment, int):
            await self.bus.publish(event)
            return
        held.append(event)
        if sum(len(h) for h in state.held.values()) > MAX_HELD_EVENTS:
            # Bounded: the order against the final gives way before memory does (counted);
            # the annotations keep their own order.
            state.held_overflow += len(held)
            await self._release(state, segment, close=False)

    async def _release(self, state: StreamState, segment: int, *, close: bool = True) -> None:
        """Publishes what waited for the segment's end events, in order; `close`: they are
        out, so later annotations of it go straight through. Until then one that arrives
        meanwhile queues behind the others."""
        async with state.releasing:
            while held := state.held.get(segment):
                state.held[segment] = []
                for event in held:
                    await self.bus.publish(event)
            if close:
                state.held.pop(segment, None)

    @staticmethod
    def _annotate(state: StreamState, event: Event) -> Event:
        """Passes a segment-end event through the stages that annotate others' events."""
        for stage in state.stages:
            if isinstance(stage, Annotator):
                event = stage.annotate(event)
        return event

    def _stats(self, state: StreamState) -> Event:
        # The worker serves every stream: its busy time is measured against all their audio.
        audio_s = self._audio_samples / SAMPLE_RATE
        counters = {
            "audio_samples": state.audio_samples,
            "paused_samples": state.paused_samples,
            "segments": state.segments,
            "stream_dropped_blocks": state.dropped_blocks,
            "order_held_overflow": state.held_overflow,
            "superseded_steps": state.superseded_steps,
            "worker_batches": self.worker.stats.batches,
            "worker_windows": self.worker.stats.windows,
        }
        latencies: dict[str, float | None] = {}
        for stage in state.stages:
            counters.update(stage.counters())
            latencies.update(stage.latencies())
        for source in self._sources:
            for attr in ("dropped_blocks", "overflows", "nonfinite_samples", "malformed_frames",
                         "rejected_frames", "evicted_sites"):
                value = getattr(source, attr, None)
                if isinstance(value, int):
                    counters[attr] = counters.get(attr, 0) + value
            # A source of many streams (MQTT satellites) adds its drops by reason and the
            # stream's own.
            per_stream = getattr(source, "stream_counters", None)
            if callable(per_stream):
                for key, value in per_stream(state.id).items():
                    counters[key] = counters.get(key, 0) + int(value)
        arrived = state.arrivals.time_of(state.last_end)
        return Stats(
            stream=state.id, start=0.0, end=state.last_end / SAMPLE_RATE,
            rtf=self.worker.stats.busy_s / audio_s if audio_s > 0 else None,
            queue_depth=state.queue.qsize() + self.worker.pending,
            lag_s=time.monotonic() - arrived if arrived is not None else 0.0,
            caption_latency_p50_s=state.partial_latency.get(50)
            if len(state.partial_latency) else latencies.get("caption_latency_p50_s"),
            refine_latency_p50_s=latencies.get("refine_latency_p50_s"),
            refine_latency_p95_s=latencies.get("refine_latency_p95_s"),
            caption_latency_p95_s=state.partial_latency.get(95)
            if len(state.partial_latency) else latencies.get("caption_latency_p95_s"),
            final_latency_p50_s=state.final_latency.get(50),
            final_latency_p95_s=state.final_latency.get(95),
            dropped=self.bus.dropped(),
            lost=self.bus.lost(),
            counters=counters,
        )
