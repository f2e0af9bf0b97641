"""Live translation of one stream: final VAD segments in, translation events out.

Translation is autoregressive generation, many times slower than a caption window, so it
never runs on the inference worker (whose single thread the captions need). It runs on its
own `GenerationWorker` thread, and its results come out of the stage's `background()`
iterator, which the engine drains as a task of its own: captions never wait for it.

Files and `--fast` (`live=False`) translate every segment in order; a full backlog makes the
stream wait (bounded memory, results independent of timing). Live runs keep only the newest
waiting segment: when a new one ends while an older one still waits, the older one is
skipped and counted (`translation_segments_skipped` in stats).

The target languages are a `TargetSelection` that every stream of a session shares:
switching them (the MQTT control topic) applies to the next segment translated; with none
selected, segments are not translated at all.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

import numpy as np

from harken.engine.events import Event, StreamError, Translation
from harken.engine.metrics import ArrivalLog, Percentiles
from harken.engine.stages.recorder import SegmentRecorder, WholeSegmentStage
from harken.engine.threads import CoreShare, model_thread
from harken.engine.vad import SegmentEnd
from harken.models.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from harken.models.translation import TargetLanguage, TranslatedText

ORDERED_BACKLOG = 8  # segments waiting at most in files/--fast before the stream waits
LIVE_BACKLOG = 1  # segments waiting at most live: the newest wins
MAX_SEGMENT_S = 120.0  # s of one segment kept at most (the VAD splits long speech sooner)

T = TypeVar("T")


class GenerationError(RuntimeError):
    """Generation failed (out of memory, bad input)."""


TRANSLATION_PRIORITY = 1  # GenerationWorker: refinement (0) of a caption goes first


class GenerationWorker:
    """One thread for generation, beside the inference worker; calls run one at a time.

    `async with GenerationWorker(name="cpu") as gen: out = await gen.run(fn, arg)`.
    Waiting calls start in order of `priority` (lower first), then of arrival: a caption's
    refinement waits for the call in flight, not for translations queued before it.
    """

    def __init__(self, *, name: str, threads: int | None = None, nice: int = 0,
                 share: CoreShare | None = None) -> None:
        """`threads`: torch intra-op threads of the generation thread, `nice`: niceness
        added to it (engine/threads.py); None and 0 leave them alone."""
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.name = name
        self.threads = threads
        self.nice = nice
        self.share = share  # tells the inference worker while a generation runs
        self.busy_s = 0.0
        self.cpu_s = 0.0  # CPU seconds of the generation thread (see WorkerStats.cpu_s)
        self.calls = 0
        self._executor: ThreadPoolExecutor | None = None
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._arrivals = itertools.count()

    async def __aenter__(self) -> Self:
        self._executor = model_thread(f"gen-{self.name}", self.threads, self.nice)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._executor is not None:
            # Waits for a generation in flight (a thread cannot be interrupted safely), off
            # the loop so that the UI and the other sinks keep running meanwhile.
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
            self._executor = None

    def _timed(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.cpu_s += time.thread_time() - started  # one thread writes it

    async def run(self, fn: Callable[..., T], *args: object,
                  priority: int = TRANSLATION_PRIORITY, task: str = "translation") -> T:
        if self._executor is None:
            raise RuntimeError("GenerationWorker used outside `async with`")
        await self._acquire(priority)
        started = time.perf_counter()
        try:
            with self.share.generating() if self.share is not None else nullcontext():
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._timed, fn, args)
        except Exception as exc:  # any model failure fails this segment, not the run
            raise GenerationError(f"{task} failed on {self.name}: {exc}") from exc
        finally:
            self.busy_s += time.perf_counter() - started
            self.calls += 1
            self._release()

    async def _acquire(self, priority: int) -> None:
        if not self._busy and not self._waiting:
            self._busy = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # the turn was handed to us as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():  # a cancelled waiter's turn is done already
                turn.set_result(None)  # hand over: the worker stays busy
                return
        self._busy = False


class Translator(Protocol):
    """What the stage needs (models/translation.SpeechTranslator has it)."""

    @property
    def model_id(self) -> str: ...

    def translate(self, samples: np.ndarray,
                  targets: Sequence[TargetLanguage]) -> list[TranslatedText]: ...


class TargetSelection:
    """The target languages of a session, shared by the stages of all its streams.

    `set` replaces them in one assignment of an immutable tuple (empty: translation off);
    checking codes against the model is the caller's job (SpeechTranslator.languages).
    """

    def __init__(self, *, targets: Sequence[TargetLanguage]) -> None:
        self._targets = tuple(targets)

    @property
    def targets(self) -> tuple[TargetLanguage, ...]:
        return self._targets

    def set(self, targets: Sequence[TargetLanguage]) -> None:
        self._targets = tuple(targets)


@dataclass(frozen=True, slots=True)
class _Job:
    segment: int
    start: int  # stream samples
    end: int
    samples: np.ndarray


class TranslationStage(WholeSegmentStage):
    """The translation task on one stream (a `Stage` of engine/stages/base.py)."""

    name = "translation"

    def __init__(self, *, stream: str, translator: Translator, generator: GenerationWorker,
                 live: bool, arrivals: ArrivalLog, targets: Sequence[TargetLanguage] = (),
                 selection: TargetSelection | None = None) -> None:
        """`selection`: the session's shared, switchable languages; else fixed `targets`."""
        if selection is None:
            if not targets:
                raise ValueError("translation needs at least one target language")
            selection = TargetSelection(targets=targets)
        self.stream = stream
        self.translator = translator
        self.selection = selection
        self.live = live
        self.latency = Percentiles()
        self.latency_ratio = Percentiles()  # latency after the segment ended / its length
        self.generation_s = 0.0  # seconds this stream's segments spent generating
        self.generation_cpu_s = 0.0  # CPU seconds of the generation thread for them
        self.translated = 0
        self.skipped = 0
        self.failed = 0
        self.truncated = 0  # translations (one per language) stopped by the token bound
        self._generator = generator
        self._arrivals = arrivals
        self._backlog = LIVE_BACKLOG if live else ORDERED_BACKLOG
        self._jobs: collections.deque[_Job] = collections.deque()
        self._ready = asyncio.Event()  # a job was queued, or the stream ended
        self._space = asyncio.Event()  # a job was taken
        self._ended = False
        self._recorder = SegmentRecorder(max_samples=round(MAX_SEGMENT_S * SAMPLE_RATE))

    def counters(self) -> dict[str, int]:
        return {"translation_segments": self.translated,
                "translation_segments_skipped": self.skipped,
                "translation_failed": self.failed,
                # Cut by the token bound (models/translation.py), not ended by the model.
                "translation_truncated": self.truncated}

    def latencies(self) -> dict[str, float | None]:
        return {"translation_latency_p50_s": self.latency.get(50),
                "translation_latency_p95_s": self.latency.get(95),
                "translation_latency_per_audio_s_p95": self.latency_ratio.get(95)}

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        recorded = self._recorder.finish(end)
        if recorded is None:
            return []
        if not self.selection.targets:
            return []  # translation is switched off
        job = _Job(segment=end.segment, start=recorded.start, end=end.end,
                   samples=recorded.samples)
        await self._enqueue(job, drop=self._skip)
        return []

    def _skip(self, job: _Job) -> None:
        self.skipped += 1  # the newest segment wins; the older one is skipped

    def on_stream_end(self) -> None:
        """No more segments: background() ends once the queued ones are translated."""
        self._ended = True
        self._ready.set()

    def background(self) -> AsyncIterator[Event]:
        return self._translate_jobs()

    async def _translate_jobs(self) -> AsyncIterator[Event]:
        while True:
            if not self._jobs:
                if self._ended:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            job = self._jobs.popleft()
            self._space.set()
            for event in await self._translate(job):
                yield event

    async def _translate(self, job: _Job) -> list[Event]:
        start_s, end_s = job.start / SAMPLE_RATE, job.end / SAMPLE_RATE
        targets = self.selection.targets  # the languages chosen now, not at the segment's end
        if not targets:
            return []
        started = time.perf_counter()
        cpu_before = self._generator.cpu_s
        try:
            results = await self._generator.run(self.translator.translate, job.samples,
                                                targets)
        except GenerationError as exc:
            self.failed += 1
            return [StreamError(stream=self.stream, start=start_s, end=end_s, message=str(exc))]
        finally:
            self.generation_s += time.perf_counter() - started
            self.generation_cpu_s += self._generator.cpu_s - cpu_before
        self.translated += 1
        self.truncated += sum(r.truncated for r in results)
        arrived = self._arrivals.time_of(job.end)
        if arrived is not None:
            latency = time.monotonic() - arrived
            self.latency.add(latency)
            if job.end > job.start:
                self.latency_ratio.add(latency * SAMPLE_RATE / (job.end - job.start))
        return [Translation(stream=self.stream, start=start_s, end=end_s, segment=job.segment,
                            lang=r.lang, text=r.text, model=self.translator.model_id)
                for r in results]
