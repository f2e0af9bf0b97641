"""The app's terminal driver notices a terminal that is gone (app/tui/driver.py); the whole
CLI with a closed terminal is in tests/test_tui_hangup.py."""

from __future__ import annotations

import errno
import os
import pty
import signal
import tty
from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.message import Message

from harken.app.tui.driver import HarkenDriver, TerminalGone, TerminalOutput, hung_up


class DeadTerminal:
    """A file whose writes fail as a closed pty's do (EIO)."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(errno.EIO, "Input/output error")

    def flush(self) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def fileno(self) -> int:
        return 2

    def isatty(self) -> bool:
        return True


def test_a_failing_write_is_reported_once_and_later_writes_are_dropped() -> None:
    gone: list[bool] = []
    dead = DeadTerminal()
    out = TerminalOutput(dead, on_error=lambda: gone.append(True))  # type: ignore[arg-type]
    assert out.write("frame 1") == len("frame 1")  # the output thread goes on, no raise
    out.flush()
    assert out.write("frame 2") == len("frame 2")
    assert (gone, dead.writes, out.failed, out.isatty()) == ([True], 1, True, False)


def test_a_closed_pty_reads_as_hung_up_and_a_live_one_does_not() -> None:
    master, slave = pty.openpty()
    tty.setraw(slave)  # a key is readable at once, as in the app
    try:
        assert not hung_up((slave,))
        os.write(master, b"q")  # a key waiting to be read is no hangup, and stays unread
        assert not hung_up((slave,))
        assert os.read(slave, 1) == b"q"
    finally:
        os.close(master)
    try:
        assert hung_up((slave,))
    finally:
        os.close(slave)
    assert hung_up((slave,))  # a closed descriptor (POLLNVAL)


class FakeApp:
    def __init__(self) -> None:
        self.posted: list[Message] = []

    def post_message(self, message: Message) -> bool:
        self.posted.append(message)
        return True


@pytest.fixture
async def driver() -> AsyncIterator[HarkenDriver]:  # a driver is made on the app's loop
    # LinuxDriver takes SIGTSTP and SIGCONT for Ctrl-Z: give them back after the test.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTSTP, signal.SIGCONT)}
    try:
        yield HarkenDriver(FakeApp())  # type: ignore[arg-type]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


async def test_the_driver_tells_the_app_once_and_ends_its_input_loop(
        driver: HarkenDriver) -> None:
    driver.terminal_gone()
    driver.terminal_gone()  # the output thread and the hangup check may both find out
    app: Any = driver._app
    assert [type(m) for m in app.posted] == [TerminalGone]
    assert driver.gone
    assert driver.exit_event.is_set()  # Textual's input loop ends on it


async def test_sigcont_resumes_only_an_app_that_was_suspended(
        driver: HarkenDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel sends SIGCONT with every hangup: resuming then would start a second input
    and output thread on the dead terminal."""
    calls: list[str] = []
    monkeypatch.setattr(driver, "start_application_mode", lambda: calls.append("start"))
    monkeypatch.setattr(driver, "stop_application_mode", lambda: calls.append("stop"))
    monkeypatch.setattr(driver, "close", lambda: calls.append("close"))
    driver.resume_application_mode()  # a hangup's SIGCONT
    assert calls == []
    driver.suspend_application_mode()  # Ctrl-Z, then `fg`
    driver.resume_application_mode()
    driver.resume_application_mode()
    assert calls == ["stop", "close", "start"]
