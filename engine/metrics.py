"""Latency bookkeeping every stage shares: when audio arrived, and bounded percentiles."""

from __future__ import annotations

import bisect
import collections

import numpy as np

from harken.models.audio import SAMPLE_RATE

ARRIVALS_KEPT = 2048  # blocks whose arrival time we remember (~200 s of 0.1 s blocks)
LATENCIES_KEPT = 2048  # latency samples kept for percentiles


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
