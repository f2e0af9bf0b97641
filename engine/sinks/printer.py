"""Captions, translations and keywords printed to a terminal or a pipe."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterable
from typing import IO

from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    Keyword,
    StreamError,
    Translation,
)


def _clock(seconds: float) -> str:
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:05.2f}"


class PrinterSink:
    """Terminal output: on a TTY the current partial is redrawn in place and finals get
    their own lines; on a pipe only finals are printed."""

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
