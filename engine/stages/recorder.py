"""One open segment's audio, kept whole for the stages that work on finished segments
(translation, refinement) rather than on windows."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harken.engine.events import Event
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart


@dataclass(frozen=True, slots=True)
class RecordedSegment:
    segment: int
    start: int  # stream samples
    end: int
    samples: np.ndarray  # float32, at most the recorder's max_samples


class SegmentRecorder:
    """Collects a segment's audio between its start and end, bounded by `max_samples`
    (the VAD's split bounds a segment too; this bound holds whatever the VAD settings)."""

    def __init__(self, *, max_samples: int) -> None:
        self.max_samples = max_samples
        self._segment: int | None = None
        self._start = 0
        self._pieces: list[np.ndarray] = []
        self._kept = 0

    def start(self, start: SegmentStart) -> None:
        self._segment, self._start = start.segment, start.start
        self._pieces, self._kept = [], 0

    def add(self, audio: SegmentAudio) -> None:
        if audio.segment != self._segment or self._kept >= self.max_samples:
            return
        piece = audio.samples[: self.max_samples - self._kept]
        self._pieces.append(piece)
        self._kept += len(piece)

    def finish(self, end: SegmentEnd) -> RecordedSegment | None:
        """The segment's audio, or None when `end` closes no segment this recorder saw."""
        if end.segment != self._segment:
            return None
        samples = np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)
        self._segment, self._pieces, self._kept = None, [], 0
        return RecordedSegment(segment=end.segment, start=self._start, end=end.end,
                               samples=samples[: max(0, end.end - self._start)])


class WholeSegmentStage:
    """The Stage methods of a stage that works on whole segments (translation, refinement):
    it records each segment and has no window steps; `on_end` is the stage's own."""

    _recorder: SegmentRecorder
    live: bool
    _jobs: collections.deque[Any]  # segments waiting for the generation thread
    _backlog: int  # waiting segments at most
    _ready: asyncio.Event  # a job was queued, or the stream ended
    _space: asyncio.Event  # a job was taken

    async def _enqueue(self, job: Any, *, drop: Callable[[Any], None]) -> None:
        """Live, the newest segment wins: the oldest waiting ones go to `drop` (counted
        there); files wait for room, so every segment is handled, in order."""
        if self.live:
            while len(self._jobs) >= self._backlog:
                drop(self._jobs.popleft())
        else:
            while len(self._jobs) >= self._backlog:
                self._space.clear()
                await self._space.wait()
        self._jobs.append(job)
        self._ready.set()

    def on_start(self, start: SegmentStart) -> None:
        self._recorder.start(start)

    def on_audio(self, audio: SegmentAudio) -> None:
        self._recorder.add(audio)

    async def step(self) -> list[Event]:
        return []
