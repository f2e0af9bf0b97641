"""Text output written on a thread of its own, so that the event loop never waits on it.

A full disk, a lost network mount or a terminal nobody reads (`harken run --jsonl | less`,
then no key pressed) blocks a `write()` call. On the event loop that would stall every sink,
the MQTT keepalives and the UI; on this writer's thread it stalls only the sink that owns it:
its pending writes fill (MAX_PENDING_WRITES), then that sink stops reading its bus
subscription, and the bus deals with that one subscription (engine/bus.py).

    async with ThreadedWriter(name="srt", open=lambda: TextFile(path)) as out:
        await out.write("text")        # written and flushed in order on the writer thread
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Protocol, Self

from harken.models.errors import SinkError

MAX_PENDING_WRITES = 64  # writes queued on the thread before `write()` waits
CLOSE_GRACE_S = 5.0  # s to finish queued writes when the sink is cancelled or failed


class TextTarget(Protocol):
    """What the writer writes to: a TextFile (engine/sinks/textfile.py) or a text stream."""

    def write(self, text: str, /) -> object: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


_Job = tuple[concurrent.futures.Future[None], Callable[[], None]] | None


class ThreadedWriter:
    """Writes and flushes text in order on one daemon thread.

    `open` runs on the thread too (opening a file on a lost mount can block). `close_target`
    False leaves the target open at the end (stdout), else it is closed. An error of the
    target (TextFile raises SinkError naming the file and the fix) is raised by a later
    `write()` or at the end of the `async with` block.
    """

    def __init__(self, *, name: str, open: Callable[[], TextTarget],
                 close_target: bool = True, max_pending: int = MAX_PENDING_WRITES) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.name = name
        self.max_pending = max_pending
        self._open = open
        self._close_target = close_target
        self._target: TextTarget | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> Self:
        # Daemon: a write blocked for good must not keep the process alive at exit.
        self._thread = threading.Thread(target=self._work, name=f"write-{self.name}",
                                        daemon=True)
        self._thread.start()
        try:
            await self._submit(self._open_target)
        except BaseException:
            self._jobs.put(None)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            end = self._submit(self._finish)
            if exc is None:
                await asyncio.gather(*self._pending)  # every write, then the close
                return
            # Already failing or cancelled: finish what is queued if the target lets us,
            # without waiting for good on one that is blocked; the first error is the one.
            await asyncio.wait([end], timeout=CLOSE_GRACE_S)
            for fut in self._pending:
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: not reported as never retrieved
        finally:
            self._jobs.put(None)

    async def write(self, text: str) -> None:
        """Queue `text`; waits only while max_pending writes are unfinished."""
        self.put(text)
        await self.room()

    async def room(self) -> None:
        """Waits while max_pending writes are unfinished (a sink's back-pressure)."""
        self._reap()
        while len(self._pending) > self.max_pending:
            await asyncio.shield(self._pending[0])  # a cancelled sink leaves the write queued
            self._reap()

    def put(self, text: str) -> None:
        """Queue `text` without waiting (a last line at the end: the caller keeps count)."""
        self._reap()
        self._submit(lambda: self._write(text))

    # ---------------------------------------------------------------- loop side

    def _submit(self, fn: Callable[[], None]) -> asyncio.Future[None]:
        if self._thread is None:
            raise RuntimeError("ThreadedWriter used outside `async with`")
        job: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._jobs.put((job, fn))
        fut = asyncio.wrap_future(job)
        self._pending.append(fut)
        return fut

    def _reap(self) -> None:
        """Forget finished writes; raise the first failure."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    # ---------------------------------------------------------------- writer thread

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                fn()
            except Exception as exc:  # handed to the loop through the future
                future.set_exception(exc)
            else:
                future.set_result(None)

    def _open_target(self) -> None:
        self._target = self._open()

    def _write(self, text: str) -> None:
        if self._target is None:
            return  # opening failed; that error is already on its way
        with self._errors():
            self._target.write(text)
            self._target.flush()

    def _finish(self) -> None:
        if self._target is None:
            return
        with self._errors():
            if self._close_target:
                self._target.close()
            else:
                self._target.flush()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """A target's OSError (stdout on a full disk) as one SinkError line. A closed pipe
        stays BrokenPipeError: the CLI ends quietly on it, as `cat` does."""
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise SinkError(f"cannot write the {self.name} output: {exc.strerror or exc}; "
                            "what was written before is kept") from exc


class Handover:
    """A text stream for code that writes synchronously (`.write()`, `.flush()`, `print`):
    what is written is collected and handed to a ThreadedWriter at each `flush()`, which
    never blocks. The sink calls `await writer.room()` between events for back-pressure."""

    def __init__(self, writer: ThreadedWriter, *, isatty: bool) -> None:
        self._writer = writer
        self._isatty = isatty
        self._parts: list[str] = []

    def write(self, text: str, /) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        if self._parts:
            self._writer.put("".join(self._parts))
            self._parts.clear()

    def isatty(self) -> bool:
        """The stream's own answer: the text ends up there."""
        return self._isatty
