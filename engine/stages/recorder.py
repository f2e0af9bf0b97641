"""One open segment's audio, kept whole for the stages that work on finished segments
(translation, refinement) rather than on windows; and the stream's most recent audio, for
a stage that wants a little audio beyond a segment's ends (the refiner's padding)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harken.engine.audio import AudioBlock
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


class RecentAudio:
    """The last `capacity` samples of one stream, with their positions on the stream clock:
    a fixed ring, so it never grows. A gap on the clock (a source that lost audio) is silence,
    as it is to the VAD; audio fed twice is kept once."""

    def __init__(self, *, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"RecentAudio capacity must be >= 1 sample, got {capacity}")
        self.capacity = capacity
        self._ring = np.zeros(capacity, np.float32)
        self.end = 0  # stream position one past the newest sample
        self._filled = 0  # valid samples before `end`, at most `capacity`
        self._fed = False

    @property
    def start(self) -> int:
        """The oldest position still held."""
        return self.end - self._filled

    def add(self, block: AudioBlock) -> None:
        if not self._fed:
            self.end, self._fed = block.start, True
        samples = np.asarray(block.samples, np.float32)
        if block.start > self.end:
            gap = min(block.start - self.end, self.capacity)
            self.end = block.start - gap  # older silence would be overwritten at once
            self._write(np.zeros(gap, np.float32))
        elif block.start < self.end:
            samples = samples[self.end - block.start:]
        self._write(samples)

    def _write(self, samples: np.ndarray) -> None:
        samples = samples[-self.capacity:]
        n = len(samples)
        if not n:
            return
        at = self.end % self.capacity
        first = min(n, self.capacity - at)
        self._ring[at: at + first] = samples[:first]
        self._ring[: n - first] = samples[first:]
        self.end += n
        self._filled = min(self.capacity, self._filled + n)

    def take(self, start: int, end: int) -> np.ndarray:
        """A copy of the audio in [start, end) that is still held (clipped to what is)."""
        a, b = max(start, self.start), min(end, self.end)
        if b <= a:
            return np.zeros(0, np.float32)
        i, j = a % self.capacity, b % self.capacity
        if i < j:
            return self._ring[i:j].copy()
        return np.concatenate([self._ring[i:], self._ring[:j]])


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
