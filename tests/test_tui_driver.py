"""The app's terminal driver notices a terminal that is gone (app/tui/driver.py); the whole
CLI with a closed terminal is in tests/test_tui_hangup.py."""

from __future__ import annotations

import os
import pty
import signal
import threading
import time
import tty
from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.message import Message

from harken.app.tui.driver import (
    OUTPUT_WAIT_S,
    HarkenDriver,
    TerminalGone,
    TerminalWriter,
    hung_up,
)


def _writer(fd: int) -> tuple[TerminalWriter, threading.Event, list[bool]]:
    caught_up = threading.Event()
    gone: list[bool] = []
    writer = TerminalWriter(fd, encoding="utf-8", on_gone=lambda: gone.append(True),
                            on_caught_up=caught_up.set)
    writer.start()
    return writer, caught_up, gone


def test_a_terminal_that_does_not_read_never_holds_the_app_for_long() -> None:
    """A frozen terminal (here a pipe nobody reads) costs the app one OUTPUT_WAIT_S, then
    its frames are dropped; once it reads again everything is redrawn."""
    read_end, write_end = os.pipe()
    writer, caught_up, gone = _writer(write_end)
    frame = "x" * 65536  # one frame fills the pipe

    def read() -> None:  # the terminal reads again, to the end
        while os.read(read_end, 1 << 20):
            pass

    reader = threading.Thread(target=read, daemon=True)
    try:
        began = time.monotonic()
        for _ in range(200):
            writer.write(frame)
        took = time.monotonic() - began
        assert took < OUTPUT_WAIT_S + 1.0, f"the app was held {took:.1f} s"
        assert writer.dropped > 0
        assert not caught_up.is_set()
        reader.start()
        assert caught_up.wait(10.0), "no redraw once the terminal read again"
        assert writer.stop(5.0)
        assert gone == []
    finally:
        os.close(write_end)  # the reader sees the end
        if reader.is_alive():
            reader.join(10.0)
        os.close(read_end)


def test_a_failing_write_is_the_terminal_gone_once_and_later_writes_are_dropped() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # EPIPE, as a closed pty gives EIO
    writer, _caught_up, gone = _writer(write_end)
    try:
        for _ in range(3):
            writer.write("frame")
        assert writer.stop(5.0)
    finally:
        os.close(write_end)
    assert gone == [True]
    assert writer.failed


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
