"""The engine: sources -> VAD -> caption scheduler -> worker -> events -> bus.

    engine = Engine(sources=[...], captioner=..., worker=..., options=EngineOptions())
    printer = engine.subscribe("printer")          # before run()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(PrinterSink().consume(printer))
        await engine.run()                          # returns when every source has ended

Each stream gets its own reader task (source -> bounded block queue) and processing task
(VAD and captions). The reader never waits on inference: for a live source the queue only
fills if processing stalls, and the source counts what it drops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from harken.engine.audio import AudioBlock, level_dbfs
from harken.engine.bus import DEFAULT_QUEUE_SIZE, EventBus, Subscription
from harken.engine.captions import ArrivalLog, Captioner, CaptionStage
from harken.engine.events import Event, Level, SpeechEnded, SpeechStarted, Stats
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions, VadSegmenter
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.streaming import StreamingOptions

BLOCK_QUEUE_SIZE = 100  # blocks (~10 s of 0.1 s blocks) between a reader and its processor
STATS_INTERVAL_S = 5.0  # stream-clock seconds between stats events


class AudioSource(Protocol):
    """An opened-by-`async with` producer of 16 kHz mono blocks (engine/sources.py)."""

    @property
    def description(self) -> str: ...

    def blocks(self) -> AsyncIterator[AudioBlock]: ...


class OpenableSource(AudioSource, AbstractAsyncContextManager["OpenableSource"], Protocol):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    vad: VadOptions = field(default_factory=VadOptions)
    streaming: StreamingOptions = field(default_factory=StreamingOptions)
    #: Live: skip stale partial steps under load. Off for files/--fast (deterministic).
    live: bool = False
    levels: bool = True
    stats_interval_s: float = STATS_INTERVAL_S


@dataclass
class StreamCounters:
    audio_samples: int = 0
    blocks: int = 0
    segments: int = 0


class Engine:
    def __init__(self, *, sources: Sequence[tuple[str, OpenableSource]], captioner: Captioner,
                 worker: InferenceWorker, options: EngineOptions) -> None:
        if not sources:
            raise ValueError("the engine needs at least one source")
        ids = [sid for sid, _ in sources]
        if len(set(ids)) != len(ids):
            raise ValueError(f"stream ids must be unique, got {ids}")
        self.options = options
        self.captioner = captioner
        self.worker = worker
        self.bus = EventBus()
        self._sources = list(sources)
        self._stages: dict[str, CaptionStage] = {}
        self._counters: dict[str, StreamCounters] = {}
        self._started = 0.0

    def subscribe(self, name: str, *, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        return self.bus.subscribe(name, maxsize=maxsize)

    async def run(self) -> None:
        """Runs every stream to its end; closes the bus (ending the sinks) in any case."""
        self._started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tg:
                for stream_id, source in self._sources:
                    tg.create_task(self._run_stream(stream_id, source), name=f"stream-{stream_id}")
        finally:
            await self.bus.close()

    async def _run_stream(self, stream_id: str, source: OpenableSource) -> None:
        arrivals = ArrivalLog()
        stage = CaptionStage(stream=stream_id, captioner=self.captioner, worker=self.worker,
                             options=self.options.streaming, live=self.options.live,
                             arrivals=arrivals)
        self._stages[stream_id] = stage
        counters = self._counters[stream_id] = StreamCounters()
        blocks: asyncio.Queue[AudioBlock | None] = asyncio.Queue(maxsize=BLOCK_QUEUE_SIZE)
        async with source, asyncio.TaskGroup() as tg:
            tg.create_task(self._read(source, blocks, arrivals), name=f"read-{stream_id}")
            await self._process(stream_id, stage, counters, blocks, source)

    @staticmethod
    async def _read(source: AudioSource, blocks: asyncio.Queue[AudioBlock | None],
                    arrivals: ArrivalLog) -> None:
        try:
            async for block in source.blocks():
                arrivals.record(block.end, time.monotonic())
                await blocks.put(block)
        finally:
            await blocks.put(None)

    async def _process(self, stream_id: str, stage: CaptionStage, counters: StreamCounters,
                       blocks: asyncio.Queue[AudioBlock | None], source: AudioSource) -> None:
        vad = VadSegmenter(self.options.vad)
        next_stats = self.options.stats_interval_s
        last_end = 0
        done = False
        while not done:
            # Take everything queued: after a slow encode, live mode jumps to the newest audio.
            batch = [await blocks.get()]
            while not blocks.empty():
                batch.append(blocks.get_nowait())
            for block in batch:
                if block is None:
                    outputs = vad.flush()
                    done = True
                else:
                    counters.blocks += 1
                    counters.audio_samples += len(block.samples)
                    last_end = block.end
                    outputs = vad.feed(block)
                    if self.options.levels:
                        await self.bus.publish(Level(
                            stream=stream_id, start=block.start / SAMPLE_RATE,
                            end=block.end / SAMPLE_RATE, dbfs=level_dbfs(block.samples),
                            speech=vad.in_speech))
                for out in outputs:
                    await self._handle(stream_id, stage, counters, out)
                if not self.options.live:
                    for event in await stage.step():
                        await self.bus.publish(event)
            if self.options.live:
                for event in await stage.step():
                    await self.bus.publish(event)
            if last_end / SAMPLE_RATE >= next_stats or done:
                await self.bus.publish(self._stats(stream_id, stage, counters, source,
                                                   blocks.qsize(), last_end))
                next_stats += self.options.stats_interval_s

    async def _handle(self, stream_id: str, stage: CaptionStage, counters: StreamCounters,
                      out: SegmentStart | SegmentAudio | SegmentEnd) -> None:
        if isinstance(out, SegmentStart):
            counters.segments += 1
            stage.on_start(out)
            t = out.start / SAMPLE_RATE
            await self.bus.publish(SpeechStarted(stream=stream_id, start=t, end=t,
                                                 segment=out.segment))
        elif isinstance(out, SegmentAudio):
            stage.on_audio(out)
        else:
            # Catch up the partial steps before the segment's audio is cut at the split.
            if not self.options.live:
                for event in await stage.step():
                    await self.bus.publish(event)
            t = out.end / SAMPLE_RATE
            seg_events = await stage.on_end(out)
            start = next((e.start for e in seg_events if e.type == "caption_final"), t)
            await self.bus.publish(SpeechEnded(stream=stream_id, start=start, end=t,
                                               segment=out.segment))
            for event in seg_events:
                await self.bus.publish(event)

    def _stats(self, stream_id: str, stage: CaptionStage, counters: StreamCounters,
               source: AudioSource, queued_blocks: int, last_end: int) -> Event:
        audio_s = counters.audio_samples / SAMPLE_RATE
        busy = self.worker.stats.busy_s
        stream_counters = {
            "audio_samples": counters.audio_samples,
            "segments": counters.segments,
            "encoded_samples": stage.encoded_samples,
            "partial_steps_skipped": stage.skipped_steps,
            "failed_windows": stage.failed_windows,
            "worker_batches": self.worker.stats.batches,
            "worker_windows": self.worker.stats.windows,
        }
        for attr in ("dropped_blocks", "overflows", "nonfinite_samples"):
            value = getattr(source, attr, None)
            if isinstance(value, int):
                stream_counters[attr] = value
        return Stats(
            stream=stream_id, start=0.0, end=last_end / SAMPLE_RATE,
            rtf=busy / audio_s if audio_s > 0 else None,
            queue_depth=queued_blocks + self.worker.pending,
            lag_s=queued_blocks * 0.1,
            caption_latency_p50_s=stage.partial_latency.get(50),
            caption_latency_p95_s=stage.partial_latency.get(95),
            dropped=self.bus.dropped(),
            counters=stream_counters,
        )

    def stage(self, stream_id: str) -> CaptionStage:
        return self._stages[stream_id]
