"""The inference worker: batching across requests, grouping rules, errors, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from harken.engine.worker import (
    MAX_PAD_FRACTION,
    PRIORITY_CAPTIONS,
    PRIORITY_KEYWORDS,
    PRIORITY_SPEAKERS,
    InferenceWorker,
)
from harken.models.errors import InferenceError


class FakeModel:
    """Records each forward pass; returns the window's mean so results can be checked."""

    def __init__(self, *, batchable: bool, delay: float = 0.0, fail: bool = False) -> None:
        self.batchable = batchable
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self._delay = delay
        self._fail = fail

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        import time

        self.threads.add(threading.current_thread().name)
        if self._fail:
            raise RuntimeError("CUDA out of memory")
        time.sleep(self._delay)
        self.batches.append([len(w) for w in windows])
        return [np.array([w.mean()]) for w in windows]


async def test_concurrent_requests_share_a_forward_pass_off_the_loop() -> None:
    model = FakeModel(batchable=True, delay=0.05)
    async with InferenceWorker(name="cpu", max_batch=8) as worker:
        # Requests made while the worker is busy (or before it wakes) share one forward pass.
        windows = [np.full(100 + i, float(i), dtype=np.float32) for i in range(6)]
        results = await asyncio.gather(*(worker.encode(model, w) for w in windows))
    assert [float(r[0]) for r in results] == [float(i) for i in range(6)]
    assert sum(len(b) for b in model.batches) == 6
    assert len(model.batches) <= 2
    assert worker.stats.windows == 6
    assert worker.stats.max_batch_seen >= 5
    assert threading.main_thread().name not in model.threads


async def test_unpaddable_models_batch_only_equal_lengths() -> None:
    model = FakeModel(batchable=False, delay=0.05)
    async with InferenceWorker(name="cpu") as worker:
        first = asyncio.ensure_future(worker.encode(model, np.zeros(50, np.float32)))
        await asyncio.sleep(0.01)
        lengths = [100, 200, 100, 200, 300]
        await asyncio.gather(first, *(worker.encode(model, np.zeros(n, np.float32))
                                      for n in lengths))
    for batch in model.batches:
        assert len(set(batch)) == 1
    assert sorted(map(tuple, model.batches)) == [(50,), (100, 100), (200, 200), (300,)]


async def test_max_batch_is_respected() -> None:
    model = FakeModel(batchable=True, delay=0.02)
    async with InferenceWorker(name="cpu", max_batch=3) as worker:
        await asyncio.gather(*(worker.encode(model, np.zeros(10, np.float32)) for _ in range(10)))
    assert max(len(b) for b in model.batches) <= 3
    assert sum(len(b) for b in model.batches) == 10


async def test_a_failing_forward_pass_is_a_typed_error_and_the_worker_lives_on() -> None:
    bad, good = FakeModel(batchable=True, fail=True), FakeModel(batchable=True)
    async with InferenceWorker(name="cuda:0") as worker:
        with pytest.raises(InferenceError, match="out of memory") as err:
            await worker.encode(bad, np.zeros(10, np.float32))
        assert isinstance(err.value.__cause__, RuntimeError)
        out = await worker.encode(good, np.ones(10, np.float32))
    assert float(out[0]) == 1.0


async def test_use_outside_async_with_is_an_error() -> None:
    worker = InferenceWorker(name="cpu")
    with pytest.raises(RuntimeError, match="async with"):
        await worker.encode(FakeModel(batchable=True), np.zeros(1, np.float32))


async def test_any_model_exception_fails_only_its_windows() -> None:
    class Buggy(FakeModel):
        def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
            raise KeyError("input_values")

    class Short(FakeModel):
        def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
            return []  # fewer results than windows

    good = FakeModel(batchable=True)
    async with InferenceWorker(name="cpu") as worker:
        for model in (Buggy(batchable=True), Short(batchable=True)):
            with pytest.raises(InferenceError):
                await asyncio.wait_for(worker.encode(model, np.zeros(4, np.float32)), 5)
        out = await asyncio.wait_for(worker.encode(good, np.ones(4, np.float32)), 5)
    assert float(out[0]) == 1.0


async def test_windows_of_different_lengths_are_bucketed_to_bound_padding() -> None:
    model = FakeModel(batchable=True, delay=0.05)
    async with InferenceWorker(name="cpu", max_batch=8) as worker:
        first = asyncio.ensure_future(worker.encode(model, np.zeros(10, np.float32)))
        await asyncio.sleep(0.01)  # the rest queue up behind this pass
        lengths = [3000, 1000, 3100, 1050, 2900, 1020]
        results = await asyncio.gather(
            first, *(worker.encode(model, np.full(n, float(n), np.float32)) for n in lengths))
    assert [float(r[0]) for r in results[1:]] == [float(n) for n in lengths]
    assert sorted(map(tuple, model.batches)) == [(10,), (1000, 1020, 1050), (2900, 3000, 3100)]
    padded = (1050 * 3 - 3070) + (3100 * 3 - 9000)
    assert worker.stats.padded_samples == padded
    assert padded <= MAX_PAD_FRACTION * worker.stats.samples


class OrderedModel:
    """Appends its name to a shared log at each forward pass (the order the worker chose)."""

    batchable = True

    def __init__(self, name: str, log: list[str], *, delay: float = 0.0) -> None:
        self.name, self._log, self._delay = name, log, delay

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        import time

        time.sleep(self._delay)
        self._log.append(f"{self.name}x{len(windows)}")
        return [np.zeros(1) for _ in windows]


async def _queue_behind_a_busy_worker(worker: InferenceWorker, log: list[str]
                                      ) -> list[asyncio.Future[np.ndarray]]:
    speakers = OrderedModel("speakers", log, delay=0.1)
    captions = OrderedModel("captions", log)
    keywords = OrderedModel("keywords", log)
    x = np.ones(160, dtype=np.float32)
    busy = asyncio.ensure_future(worker.encode(speakers, x, priority=PRIORITY_SPEAKERS))
    await asyncio.sleep(0.03)  # the worker is now inside the first speakers pass
    queued = [asyncio.ensure_future(worker.encode(speakers, x, priority=PRIORITY_SPEAKERS)),
              asyncio.ensure_future(worker.encode(keywords, x, priority=PRIORITY_KEYWORDS)),
              asyncio.ensure_future(worker.encode(captions, x, priority=PRIORITY_CAPTIONS))]
    await asyncio.gather(busy, *queued)
    return queued


async def test_queued_captions_run_before_keywords_before_speakers() -> None:
    log: list[str] = []
    async with InferenceWorker(name="cpu", max_batch=8) as worker:
        await _queue_behind_a_busy_worker(worker, log)
    # The pass in flight finishes; then the most urgent queued work, whatever came first.
    assert log == ["speakersx1", "captionsx1", "keywordsx1", "speakersx1"]


async def test_a_request_that_waited_aging_s_outranks_newer_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("harken.engine.worker.AGING_S", 0.0)  # everything has waited enough
    log: list[str] = []
    async with InferenceWorker(name="cpu", max_batch=8) as worker:
        await _queue_behind_a_busy_worker(worker, log)
    assert log == ["speakersx1", "speakersx1", "keywordsx1", "captionsx1"]  # oldest first


async def test_a_pass_in_flight_when_the_worker_stops_fails_its_requests() -> None:
    model = FakeModel(batchable=True, delay=0.3)
    async with InferenceWorker(name="cpu") as worker:
        waiting = asyncio.ensure_future(worker.encode(model, np.ones(10, np.float32)))
        await asyncio.sleep(0.05)  # the pass is running when the worker stops
    with pytest.raises(InferenceError, match="has stopped"):
        await asyncio.wait_for(waiting, timeout=5)
