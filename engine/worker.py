"""The inference worker: owns the models of one compute device, runs them off the event loop.

Requests ("encode this window with that model") wait in a bounded queue. The dispatcher
takes everything queued at once, groups what can share a forward pass (same model and, for
models that cannot pad, the same length) and runs each group as one batch on a single
thread: one thread per device keeps the GPU's work ordered and the loop free.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

import numpy as np

from harken.models.errors import InferenceError

MAX_BATCH = 16  # windows per forward pass
MAX_PENDING = 64  # queued requests before submitters wait


class BatchEncoder(Protocol):
    """What the worker needs of a model: a batched encode and whether lengths may differ."""

    @property
    def batchable(self) -> bool: ...

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class _Request:
    model: BatchEncoder
    samples: np.ndarray
    future: asyncio.Future[np.ndarray]

    def batch_key(self) -> Hashable:
        length = None if self.model.batchable else len(self.samples)
        return (id(self.model), length)


@dataclass
class WorkerStats:
    batches: int = 0
    windows: int = 0
    busy_s: float = 0.0
    max_batch_seen: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


class InferenceWorker:
    """`async with InferenceWorker(name="cpu") as worker: out = await worker.encode(m, x)`."""

    def __init__(self, *, name: str, max_batch: int = MAX_BATCH,
                 max_pending: int = MAX_PENDING) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1")
        self.name = name
        self.max_batch = max_batch
        self.stats = WorkerStats()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=max_pending)
        self._executor: ThreadPoolExecutor | None = None
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{self.name}")
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"worker-{self.name}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        while not self._queue.empty():
            req = self._queue.get_nowait()
            if not req.future.done():
                req.future.cancel()
        if self._executor is not None:
            # Waits for a forward pass in flight (a thread cannot be interrupted safely), off
            # the loop so that the UI and the other sinks keep running meanwhile.
            await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def encode(self, model: BatchEncoder, samples: np.ndarray) -> np.ndarray:
        if self._dispatcher is None:
            raise RuntimeError("InferenceWorker used outside `async with`")
        if self._dispatcher.done():
            raise InferenceError(f"the {self.name} inference worker has stopped")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(model=model, samples=samples, future=future))
        return await future

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        requests: list[_Request] = []
        try:
            while True:
                requests = [await self._queue.get()]
                while not self._queue.empty():
                    requests.append(self._queue.get_nowait())
                groups: dict[Hashable, list[_Request]] = {}
                for req in requests:
                    if not req.future.cancelled():
                        groups.setdefault(req.batch_key(), []).append(req)
                for group in groups.values():
                    for start in range(0, len(group), self.max_batch):
                        await self._run(loop, group[start:start + self.max_batch])
        finally:
            # Nobody may wait forever on a request this loop took but will never run.
            stopped = InferenceError(f"the {self.name} inference worker has stopped")
            for req in requests:
                if not req.future.done():
                    req.future.set_exception(stopped)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        model = batch[0].model
        windows = [r.samples for r in batch]
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, model.encode, windows)
            if len(outputs) != len(batch):
                raise ValueError(f"the model returned {len(outputs)} results for "
                                 f"{len(batch)} windows")
        except Exception as exc:  # any model failure fails its windows, never the worker
            error = InferenceError(f"inference failed on {self.name}: {exc}")
            error.__cause__ = exc
            for req in batch:
                if not req.future.done():
                    req.future.set_exception(error)
            return
        finally:
            self.stats.busy_s += time.perf_counter() - started
        self.stats.batches += 1
        self.stats.windows += len(batch)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        self.stats.batch_sizes[len(batch)] = self.stats.batch_sizes.get(len(batch), 0) + 1
        for req, out in zip(batch, outputs, strict=True):
            if not req.future.done():
                req.future.set_result(out)
