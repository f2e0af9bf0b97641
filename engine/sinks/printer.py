"""Captions, translations and keywords printed to a terminal or a pipe.

The text goes out through a ThreadedWriter (engine/sinks/writer.py): a terminal nobody reads
(`harken run --jsonl | less`, paused) blocks only this sink, never the event loop, and with
it MQTT, the UI and the other sinks.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO

from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    Keyword,
    StreamError,
    Translation,
)
from harken.engine.sinks.writer import Handover, ThreadedWriter


def _clock(seconds: float) -> str:
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:05.2f}"


class PrinterSink:
    """Terminal output: on a TTY the current partial is redrawn in place and finals get
    their own lines; on a pipe only finals are printed."""

    _out: IO[str] | Handover  # the stream; while consuming, the hand-over to its writer thread

    def __init__(self, *, stream: IO[str] | None = None, tty: bool | None = None,
                 show_stream: bool = False, name: str = "printer") -> None:
        self.name = name
        self._out = stream if stream is not None else sys.stdout
        self._tty = self._out.isatty() if tty is None else tty
        self._show_stream = show_stream
        self._partial_shown = False

    def _label(self, event: Event) -> str:
        span = f"[{_clock(event.start)} → {_clock(event.end)}]"
        return f"{event.stream} {span}" if self._show_stream else span

    def _clear_partial(self) -> None:
        if self._partial_shown:
            self._out.write("\r\x1b[2K")
            self._partial_shown = False

    async def consume(self, events: AsyncIterable[Event]) -> None:
        stream = self._out
        if isinstance(stream, Handover):
            raise RuntimeError("PrinterSink.consume() is already running")
        async with ThreadedWriter(name=self.name, open=lambda: stream,
                                  close_target=False) as writer:
            self._out = Handover(writer, isatty=stream.isatty())
            try:
                await self._print(self._paced(events, writer))
            finally:
                self._out = stream

    @staticmethod
    async def _paced(events: AsyncIterable[Event],
                     writer: ThreadedWriter) -> AsyncIterator[Event]:
        """Takes the next event only once the writer thread has room (back-pressure)."""
        async for event in events:
            await writer.room()
            yield event

    async def _print(self, events: AsyncIterable[Event]) -> None:
        try:
            async for event in events:
                if isinstance(event, CaptionPartial) and self._tty:
                    width = shutil.get_terminal_size((80, 24)).columns
                    line = f"{self._label(event)} {event.text}"
                    # Keep the last part: that is where the words change.
                    if len(line) > width - 1:
                        line = "…" + line[-(width - 2):]
                    self._out.write(f"\r\x1b[2K\x1b[2m{line}\x1b[0m")
                    self._partial_shown = True
                    self._out.flush()
                elif isinstance(event, CaptionFinal):
                    self._clear_partial()
                    speaker = f" {event.speaker}:" if event.speaker else ""
                    if event.text.strip():
                        self._out.write(f"{self._label(event)}{speaker} {event.text.strip()}\n")
                    self._out.flush()
                elif isinstance(event, Translation) and event.text.strip():
                    self._clear_partial()
                    self._out.write(f"{self._label(event)} [{event.lang}] {event.text.strip()}\n")
                    self._out.flush()
                elif isinstance(event, Keyword):
                    self._clear_partial()
                    self._out.write(f"{self._label(event)} keyword: {event.keyword} "
                                    f"({event.score:.2f})\n")
                    self._out.flush()
                elif isinstance(event, StreamError):
                    self._clear_partial()
                    print(f"harken: {event.stream}: {event.message}", file=sys.stderr)
        finally:
            self._clear_partial()
            self._out.flush()
