"""The app's terminal driver: Textual's own, plus noticing a terminal that has gone away.

A terminal can go away without a SIGHUP reaching Harken: its pty closed while the hangup
was ignored or blocked (nohup, a parent that ignores it), or it was never the controlling
terminal. Textual's driver does not notice. Its input thread reads end-of-file in a loop
at 100% CPU, and its output thread dies on the first EIO; the app's next frames then fill
that thread's queue and block the event loop for good, so SIGTERM (acted on by that loop)
is never acted on either, and the run, with the embedded broker, stays until killed.

HarkenDriver works around it from Harken's side (Textual itself is untouched):
- its output goes through TerminalWriter, its own output thread, which takes a write error
  as "the terminal is gone" instead of dying on it, and which the app never waits on for
  long: a terminal that stops reading has frames dropped (and is redrawn when it reads
  again) instead of blocking the event loop that also runs the engine;
- every TERMINAL_CHECK_S it polls the terminal for a hangup (POLLHUP, POLLERR, POLLNVAL on
  the input and the output), which reads nothing, so it takes no key from the app;
- once the terminal is gone it ends the input thread's loop and posts TerminalGone to the
  app, which stops the run as a SIGHUP does (app/tui/app.py);
- it resumes application mode on SIGCONT only after a suspend (Ctrl-Z): a hangup brings a
  SIGCONT too, and Textual would start a second input and output thread on the dead
  terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import select
import threading
from collections.abc import Callable
from typing import Any

from textual.drivers.linux_driver import LinuxDriver
from textual.message import Message

TERMINAL_CHECK_S = 0.25  # s between looks at the terminal for a hangup
OUTPUT_QUEUE_WRITES = 30  # writes queued for the terminal (Textual's own queue holds 30)
OUTPUT_WAIT_S = 0.5  # s the app waits for room in that queue before it drops frames
OUTPUT_CLOSE_S = 1.0  # s the output gets to finish at exit
_GONE_EVENTS = select.POLLHUP | select.POLLERR | select.POLLNVAL


class TerminalGone(Message):
    """The terminal the app draws on has gone away (hung up, or its output fails)."""


def hung_up(fds: tuple[int, ...]) -> bool:
    """Whether any of `fds` reports a hangup or an error (a closed pty, a closed fd). Polls
    for no data event, so a key waiting to be read is left to the app."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)  # hangup, error and "not open" are always reported
    return any(mask & _GONE_EVENTS for _fd, mask in poller.poll(0))


class TerminalWriter(threading.Thread):
    """The app's output, written to the terminal by a thread of its own that the app never
    waits on for long. A slow terminal holds each write up to OUTPUT_WAIT_S, as Textual's
    own bounded queue would; one that does not read at all (a frozen ssh link) then has
    frames dropped until it reads again (`on_caught_up`: the app redraws everything), so
    the engine, which shares the app's event loop, and SIGTERM go on. A write error (EIO
    on a closed pty, EPIPE) is the terminal gone: `on_gone` is told once and every later
    write is dropped."""

    def __init__(self, fd: int, *, encoding: str, on_gone: Callable[[], None],
                 on_caught_up: Callable[[], None]) -> None:
        super().__init__(daemon=True, name="harken-output")  # a stuck write cannot hold exit
        self._fd = fd
        self._encoding = encoding
        self._on_gone = on_gone
        self._on_caught_up = on_caught_up
        self._queue: queue.Queue[bytes | None] = queue.Queue(OUTPUT_QUEUE_WRITES)
        self._stalled = False
        self.failed = False
        self.dropped = 0  # writes dropped while the terminal did not read

    def write(self, text: str) -> None:
        if self.failed:
            return
        data = text.encode(self._encoding, errors="replace")
        try:
            # Stalled: no wait at all until the thread has caught up.
            self._queue.put(data, timeout=0 if self._stalled else OUTPUT_WAIT_S)
        except queue.Full:
            self._stalled = True
            self.dropped += 1

    def run(self) -> None:
        while (data := self._queue.get()) is not None:
            if not self.failed:
                self._write_all(data)
            if self._stalled and self._queue.empty():
                self._stalled = False
                self._on_caught_up()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError:
                self.failed = True
                self._on_gone()
                return
            view = view[written:]

    def stop(self, timeout_s: float) -> bool:
        """Ends the thread once what is queued is written; False if it did not end within
        `timeout_s` (a write stuck on a terminal that does not read: it is left behind)."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return False
        self.join(timeout_s)
        return not self.is_alive()


class HarkenDriver(LinuxDriver):
    """Textual's Linux/macOS driver that notices a terminal that is gone (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gone = threading.Event()
        self._check: asyncio.TimerHandle | None = None
        self._suspended = False
        self._output: TerminalWriter | None = None

    @property
    def gone(self) -> bool:
        """Whether the terminal has gone away."""
        return self._gone.is_set()

    def start_application_mode(self) -> None:
        if self._output is None and self._file is not None:
            with contextlib.suppress(OSError, ValueError):  # a dead terminal: found out below
                self._file.flush()  # what Python still buffers goes out before the app
            self._output = TerminalWriter(
                self._file.fileno(), encoding=self._file.encoding or "utf-8",
                on_gone=self.terminal_gone, on_caught_up=self._redraw)
            self._output.start()
        super().start_application_mode()  # type: ignore[no-untyped-call]
        if self._check is not None:
            self._check.cancel()
        self._check = self._loop.call_later(TERMINAL_CHECK_S, self._look)

    def stop_application_mode(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        super().stop_application_mode()

    def write(self, data: str) -> None:
        # Everything the app and the driver send goes through here: to our writer, and
        # never to Textual's, whose full queue would block the event loop.
        if self._output is not None:
            self._output.write(data)

    def close(self) -> None:
        super().close()  # Textual's own output thread: it was sent nothing, ends at once
        output, self._output = self._output, None
        if output is not None:
            output.stop(OUTPUT_CLOSE_S)

    def _redraw(self) -> None:
        """The terminal reads again after frames were dropped: draw the whole screen."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to draw
            self._loop.call_soon_threadsafe(self._app.refresh)

    def suspend_application_mode(self) -> None:
        self._suspended = True
        super().suspend_application_mode()

    def resume_application_mode(self) -> None:
        # The kernel sends SIGCONT with every hangup, suspended or not: only a suspended
        # app has anything to resume.
        if not self._suspended:
            return
        self._suspended = False
        super().resume_application_mode()

    def _look(self) -> None:
        self._check = None
        fds = (self.fileno, *([self._file.fileno()] if self._file is not None else []))
        try:
            gone = hung_up(fds)
        except (OSError, ValueError):  # a descriptor closed under us
            gone = True
        if gone:
            self.terminal_gone()
        else:
            self._check = self._loop.call_later(TERMINAL_CHECK_S, self._look)

    def terminal_gone(self) -> None:
        """The terminal is gone: end the input thread's loop (it would read end-of-file at
        full speed) and tell the app, once. Safe from any thread."""
        if self._gone.is_set():
            return
        self._gone.set()
        self.exit_event.set()
        self._app.post_message(TerminalGone())
