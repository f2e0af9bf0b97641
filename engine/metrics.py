"""Bookkeeping the stages of one stream share: when audio arrived, bounded percentiles, and
the first pass of the latest closed caption segments (for the refine stage)."""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass

import numpy as np

from harken.engine.events import Word
from harken.models.audio import SAMPLE_RATE

ARRIVALS_KEPT = 2048  # blocks whose arrival time we remember (~200 s of 0.1 s blocks)
LATENCIES_KEPT = 2048  # latency samples kept for percentiles
FINALS_KEPT = 16  # closed segments kept for a later stage (the refine stage takes each at once)


class ArrivalLog:
    """When each block's audio reached the engine (monotonic s), to measure latency."""

    def __init__(self) -> None:
        self._ends: collections.deque[int] = collections.deque(maxlen=ARRIVALS_KEPT)
        self._times: collections.deque[float] = collections.deque(maxlen=ARRIVALS_KEPT)

    def record(self, end_sample: int, at: float) -> None:
        self._ends.append(end_sample)
        self._times.append(at)

    def time_of(self, sample: int) -> float | None:
        """Arrival time of the block that carried `sample` (None if forgotten)."""
        ends = self._ends
        i = bisect.bisect_left(ends, sample)  # deques index in O(1) at the ends, O(n/64) inside
        if i >= len(ends):
            return self._times[-1] if self._times else None
        if i == 0 and sample < ends[0] - SAMPLE_RATE * 10:
            return None
        return self._times[i]


class Percentiles:
    """Bounded reservoir of the latest latency samples."""

    def __init__(self) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=LATENCIES_KEPT)

    def add(self, value: float) -> None:
        self._values.append(value)

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> tuple[float, ...]:
        """The samples kept (benchmarks pool them across streams)."""
        return tuple(self._values)

    def get(self, q: float) -> float | None:
        if not self._values:
            return None
        return float(np.percentile(np.fromiter(self._values, dtype=np.float64), q))

    def samples(self) -> list[float]:
        """The kept values, oldest first (to pool them over several runs)."""
        return list(self._values)


@dataclass(frozen=True, slots=True, eq=False)  # holds an array: compare by identity
class ClosedSegment:
    """The first pass of one closed caption segment: its CTC log-probs and final text."""

    segment: int
    start: int  # stream sample of the segment's frame 0
    logprobs: np.ndarray  # [frames, vocab] float32
    text: str
    words: tuple[Word, ...]


class FinalLog:
    """The caption stage's latest closed segments, for a stage that reuses the first pass
    (the refine stage aligns its text to these log-probs instead of encoding again).
    Bounded: a segment nobody takes is forgotten after FINALS_KEPT newer ones."""

    def __init__(self) -> None:
        self._kept: collections.OrderedDict[int, ClosedSegment] = collections.OrderedDict()

    def put(self, closed: ClosedSegment) -> None:
        self._kept[closed.segment] = closed
        while len(self._kept) > FINALS_KEPT:
            self._kept.popitem(last=False)

    def take(self, segment: int) -> ClosedSegment | None:
        return self._kept.pop(segment, None)
