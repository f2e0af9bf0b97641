"""The inference worker: owns the models of one compute device, runs them off the event loop.

Requests ("encode this window with that model") wait in a bounded queue. The dispatcher
takes everything queued at once, groups what can share a forward pass (same model and, for
models that cannot pad, the same length) and runs each group as batches on a single thread:
one thread per device keeps the GPU's work ordered and the loop free. Windows of different
lengths (different streams, or a segment's first windows) share a padded forward pass when
the model can pad; they are sorted by length and cut into buckets so that padding never
exceeds MAX_PAD_FRACTION of the audio in a batch.

Requests carry a priority, and after every forward pass the most urgent queued work runs
next: caption windows (the text people are reading) before keyword windows, keyword
windows before speaker windows. A request that has waited AGING_S runs before anything
newer, whatever its priority, so that under overload the lower tasks fall behind (the
speaker stage widens its steps) but never stop.
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

from harken.engine.threads import CoreShare, model_thread, set_thread_count
from harken.models.errors import InferenceError

MAX_BATCH = 16  # windows per forward pass
MAX_PENDING = 64  # queued requests before submitters wait
MAX_PAD_FRACTION = 0.25  # padded samples per real sample allowed in one batch
AGING_S = 2.0  # s a request waits before it outranks every newer one

PRIORITY_CAPTIONS = 0  # live text: runs first
PRIORITY_KEYWORDS = 1  # short windows whose hits should come within a second
PRIORITY_SPEAKERS = 2  # labels that annotate text already shown


class BatchEncoder(Protocol):
    """What the worker needs of a model: a batched encode and whether lengths may differ."""

    @property
    def batchable(self) -> bool: ...

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]: ...


@dataclass(eq=False)  # compared by identity: its samples are arrays
class _Request:
    model: BatchEncoder
    samples: np.ndarray
    future: asyncio.Future[np.ndarray]
    priority: int = PRIORITY_SPEAKERS
    queued: float = field(default_factory=time.monotonic)

    def batch_key(self) -> Hashable:
        length = None if self.model.batchable else len(self.samples)
        return (id(self.model), length)

    def rank(self, now: float) -> tuple[int, float]:
        """Lower runs first: the priority (or -1 once aged), then the age."""
        aged = now - self.queued >= AGING_S
        return (-1 if aged else self.priority, self.queued)


def next_batch(pending: list[_Request], *, max_batch: int, now: float) -> list[_Request]:
    """The forward pass to run now: windows of the highest-ranked request's model (and
    length, for a model that cannot pad) and priority, the bucket holding that request."""
    first = min(pending, key=lambda r: r.rank(now))
    rank, key = first.rank(now)[0], first.batch_key()
    group = [r for r in pending if r.batch_key() == key and r.rank(now)[0] == rank]
    return next(b for b in buckets(group, max_batch=max_batch) if any(r is first for r in b))


def _encode_timed(model: BatchEncoder, windows: list[np.ndarray],
                  threads: int | None) -> tuple[list[np.ndarray], float]:
    if threads is not None:
        set_thread_count(threads)
    started = time.thread_time()
    outputs = model.encode(windows)
    return outputs, time.thread_time() - started


def buckets(group: list[_Request], *, max_batch: int) -> list[list[_Request]]:
    """`group` (one model) cut into batches of at most `max_batch` windows; windows of
    different lengths sorted by length, a batch closed before padding would exceed
    MAX_PAD_FRACTION of its audio."""
    ordered = sorted(group, key=lambda r: len(r.samples))
    out: list[list[_Request]] = []
    batch: list[_Request] = []
    total = 0
    for req in ordered:
        n = len(req.samples)
        padded = n * (len(batch) + 1)  # ascending order: this one is the longest
        if batch and (len(batch) >= max_batch
                      or padded - (total + n) > MAX_PAD_FRACTION * (total + n)):
            out.append(batch)
            batch, total = [], 0
        batch.append(req)
        total += n
    if batch:
        out.append(batch)
    return out


@dataclass
class WorkerStats:
    batches: int = 0
    windows: int = 0
    busy_s: float = 0.0
    max_batch_seen: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
    busy_by_model: dict[str, float] = field(default_factory=dict)  # model_id -> seconds
    # CPU seconds of the worker thread itself: unlike busy_s, not inflated when other
    # processes share the cores (all of the compute when it runs one torch thread).
    cpu_s: float = 0.0
    cpu_by_model: dict[str, float] = field(default_factory=dict)
    samples: int = 0  # audio samples encoded
    padded_samples: int = 0  # zeros added to batch windows of different lengths


class InferenceWorker:
    """`async with InferenceWorker(name="cpu") as worker: out = await worker.encode(m, x)`."""

    def __init__(self, *, name: str, max_batch: int = MAX_BATCH,
                 max_pending: int = MAX_PENDING, threads: int | None = None,
                 share: CoreShare | None = None) -> None:
        """`threads`: torch intra-op threads of the worker's thread (engine/threads.py);
        None leaves torch's setting alone. `share`: re-read before each forward pass, while
        the generation thread borrows some of them."""
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.name = name
        self.max_batch = max_batch
        self._max_pending = max_pending
        self.threads = threads
        self.share = share
        self.stats = WorkerStats()
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=max_pending)
        self._executor: ThreadPoolExecutor | None = None
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def __aenter__(self) -> Self:
        self._executor = model_thread(f"infer-{self.name}", self.threads)
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

    async def encode(self, model: BatchEncoder, samples: np.ndarray, *,
                     priority: int = PRIORITY_SPEAKERS) -> np.ndarray:
        """`model`'s output for `samples`; `priority` (PRIORITY_*) orders queued work."""
        if self._dispatcher is None:
            raise RuntimeError("InferenceWorker used outside `async with`")
        if self._dispatcher.done():
            raise InferenceError(f"the {self.name} inference worker has stopped")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(model=model, samples=samples, future=future,
                                       priority=priority))
        return await future

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        pending: list[_Request] = []
        batch: list[_Request] = []  # the forward pass in flight
        try:
            while True:
                if not pending:
                    pending.append(await self._queue.get())
                # Taken from the queue only up to its size: the two together stay bounded.
                while len(pending) < self._max_pending and not self._queue.empty():
                    pending.append(self._queue.get_nowait())
                pending = [r for r in pending if not r.future.cancelled()]
                if not pending:
                    continue
                batch = next_batch(pending, max_batch=self.max_batch, now=time.monotonic())
                taken = {id(r) for r in batch}
                pending = [r for r in pending if id(r) not in taken]
                await self._run(loop, batch)
        finally:
            # Nobody may wait forever on a request this loop took but will never run.
            stopped = InferenceError(f"the {self.name} inference worker has stopped")
            for req in [*pending, *batch]:
                if not req.future.done():
                    req.future.set_exception(stopped)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        model = batch[0].model
        windows = [r.samples for r in batch]
        started = time.perf_counter()
        try:
            threads = self.share.inference_threads() if self.share is not None else None
            outputs, cpu_s = await loop.run_in_executor(self._executor, _encode_timed, model,
                                                        windows, threads)
            self.stats.cpu_s += cpu_s
            key = str(getattr(model, "model_id", type(model).__name__))
            self.stats.cpu_by_model[key] = self.stats.cpu_by_model.get(key, 0.0) + cpu_s
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
            elapsed = time.perf_counter() - started
            self.stats.busy_s += elapsed
            key = str(getattr(model, "model_id", type(model).__name__))
            self.stats.busy_by_model[key] = self.stats.busy_by_model.get(key, 0.0) + elapsed
        self.stats.batches += 1
        self.stats.windows += len(batch)
        lengths = [len(r.samples) for r in batch]
        self.stats.samples += sum(lengths)
        self.stats.padded_samples += max(lengths) * len(lengths) - sum(lengths)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        self.stats.batch_sizes[len(batch)] = self.stats.batch_sizes.get(len(batch), 0) + 1
        for req, out in zip(batch, outputs, strict=True):
            if not req.future.done():
                req.future.set_result(out)
