"""The app's terminal driver: Textual's own, plus noticing a terminal that has gone away.

A terminal can go away without a SIGHUP reaching Harken: its pty closed while the hangup
was ignored or blocked (nohup, a parent that ignores it), or it was never the controlling
terminal. Textual's driver does not notice. Its input thread reads end-of-file in a loop
at 100% CPU, and its output thread dies on the first EIO; the app's next frames then fill
that thread's queue and block the event loop for good, so SIGTERM (acted on by that loop)
is never acted on either, and the run, with the embedded broker, stays until killed.

HarkenDriver works around it from Harken's side (Textual itself is untouched):
- its output goes through TerminalOutput, which takes a write error as "the terminal is
  gone" instead of letting it end the output thread, and drops every write after it;
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
import select
import threading
from collections.abc import Callable
from typing import IO, Any

from textual.drivers.linux_driver import LinuxDriver
from textual.message import Message

TERMINAL_CHECK_S = 0.25  # s between looks at the terminal for a hangup
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


class TerminalOutput:
    """The driver's output file: writes go through until one fails (EIO on a closed pty,
    EPIPE, a closed file); then `on_error` is told once and every later write is dropped,
    so the thread that writes never dies and never blocks the app."""

    def __init__(self, file: IO[str], *, on_error: Callable[[], None]) -> None:
        self._file = file
        self._on_error = on_error
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                return self._file.write(text)
            except (OSError, ValueError):  # ValueError: the file was closed
                self._fail()
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            try:
                self._file.flush()
            except (OSError, ValueError):
                self._fail()

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return not self.failed and self._file.isatty()

    def _fail(self) -> None:
        self.failed = True
        self._on_error()


class HarkenDriver(LinuxDriver):
    """Textual's Linux/macOS driver that notices a terminal that is gone (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gone = threading.Event()
        self._check: asyncio.TimerHandle | None = None
        self._suspended = False
        if self._file is not None:
            # The output thread only writes, flushes and asks fileno(): a file-like will do.
            self._file = TerminalOutput(  # type: ignore[assignment]
                self._file, on_error=self.terminal_gone)

    @property
    def gone(self) -> bool:
        """Whether the terminal has gone away."""
        return self._gone.is_set()

    def start_application_mode(self) -> None:
        super().start_application_mode()  # type: ignore[no-untyped-call]
        if self._check is not None:
            self._check.cancel()
        self._check = self._loop.call_later(TERMINAL_CHECK_S, self._look)

    def stop_application_mode(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        super().stop_application_mode()

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
