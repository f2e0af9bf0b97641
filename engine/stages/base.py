"""What a task stage is: the protocol the engine (engine/pipeline.py) drives for each stream,
the optional abilities it looks for, and what a stage factory gets.

Stages are duck-typed: captions.py, speakers.py, keywords.py, translation.py and refine.py
implement these without importing them; mypy checks them where app/tasks/ builds the
factories.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from harken.engine.audio import AudioBlock
from harken.engine.events import Event
from harken.engine.metrics import ArrivalLog, FinalLog
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.engine.worker import InferenceWorker


class Stage(Protocol):
    """One task (captions, speakers, keywords...) on one stream, fed by the VAD.

    The engine calls these in stream order from the stream's processing task; what they
    return is published in that order. Live, each stage's `step()` runs as a task of its own
    while the VAD goes on, so `on_start`/`on_audio` may come while a step awaits the worker
    (a step must copy the audio it submits); a stage's `on_end` always waits for its own
    step in flight, and its next `on_start` comes only after its `on_end` has returned
    (live, possibly while other stages still close the segment; see TakesSegmentAtEnd for
    the exception). Slow work that must not delay other stages (e.g. translation) belongs
    in `background()`, which the engine runs as its own task; such a stage also has
    `on_stream_end()`, called once the stream's last segment has ended, after which its
    background iterator must finish (the engine waits for it).
    """

    name: str

    def on_start(self, start: SegmentStart) -> None: ...
    def on_audio(self, audio: SegmentAudio) -> None: ...
    async def step(self) -> list[Event]: ...
    async def on_end(self, end: SegmentEnd) -> list[Event]: ...
    def counters(self) -> dict[str, int]: ...
    def latencies(self) -> dict[str, float | None]: ...
    def background(self) -> AsyncIterator[Event] | None: ...


@runtime_checkable
class Annotator(Protocol):
    """Optional for a stage: may return a copy of another stage's segment-end event with a
    field filled in (dataclasses.replace), e.g. CaptionFinal.speaker from the speakers stage.
    It may also have `settled(event) -> bool`: whether that answer is already what it will
    be once this stage has closed the segment too; the engine then publishes the event
    without waiting for that. Without it, an event always waits for the stage's close.
    """

    def annotate(self, event: Event) -> Event: ...


@runtime_checkable
class EndSupersedesStep(Protocol):
    """Optional for a stage: live, when `end_supersedes_step()` is true at a segment's end,
    the engine cancels the stage's step in flight instead of waiting for it, because its
    on_end redoes that work (the speakers stage's last pass covers the frames of a pass
    still queued). The stage must then be as it was before the step."""

    def end_supersedes_step(self) -> bool: ...


@runtime_checkable
class TakesSegmentAtEnd(Protocol):
    """Optional for a stage: `takes_segment_at_end` true says that on_end takes what it
    needs of the segment when called, before its first await (e.g. a plain method that
    detaches the segment and returns the coroutine doing the rest). Live, the engine then
    gives the stage the next segment's audio while that coroutine runs (if the stage
    annotates no other stage's events), so the caption stage steps on the next segment
    while its last final is still being encoded."""

    takes_segment_at_end: bool


@runtime_checkable
class AudioListener(Protocol):
    """Optional for a stage: sees every block of its stream as the VAD gets it (silence while
    paused), before that block's segment events, e.g. to give the refiner audio just beyond
    a segment's ends. It must keep only a bounded amount. Live, the blocks read while it
    still closes a segment come once it has closed it, in order with the VAD's outputs
    meanwhile (the engine's BLOCK_QUEUE_SIZE of them at most: it hears a gap beyond)."""

    def on_block(self, block: AudioBlock) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StageContext:
    """What a stage factory gets to build a stage for one stream."""

    stream: str
    worker: InferenceWorker
    arrivals: ArrivalLog
    live: bool
    #: One per stream (the engine builds one context per stream for all its factories):
    #: the caption stage's closed segments, for the refine stage.
    finals: FinalLog = field(default_factory=FinalLog)


StageFactory = Callable[[StageContext], Stage]
