"""Captions, translations and keywords printed to a terminal or a pipe.

Written through a ThreadedWriter (engine/sinks/writer.py): a terminal nobody reads blocks
only this sink, never the event loop (and with it MQTT and the other sinks).
"""

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
from harken.engine.sinks.writer import ThreadedWriter


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

    def _clear_partial(self) -> str:
        if not self._partial_shown:
            return ""
        self._partial_shown = False
        return "\r\x1b[2K"

    def _render(self, event: Event) -> str:
        """What to write for `event` ("" for nothing)."""
        if isinstance(event, CaptionPartial) and self._tty:
            width = shutil.get_terminal_size((80, 24)).columns
            line = f"{self._label(event)} {event.text}"
            # Keep the last part: that is where the words change.
            if len(line) > width - 1:
                line = "…" + line[-(width - 2):]
            self._partial_shown = True
            return f"\r\x1b[2K\x1b[2m{line}\x1b[0m"
        if isinstance(event, CaptionFinal):
            speaker = f" {event.speaker}:" if event.speaker else ""
            text = event.text.strip()
            return self._clear_partial() + (f"{self._label(event)}{speaker} {text}\n"
                                             if text else "")
        if isinstance(event, Translation) and event.text.strip():
            return (self._clear_partial()
                    + f"{self._label(event)} [{event.lang}] {event.text.strip()}\n")
        if isinstance(event, Keyword):
            return (self._clear_partial() + f"{self._label(event)} keyword: {event.keyword} "
                    f"({event.score:.2f})\n")
        return ""

    async def consume(self, events: AsyncIterable[Event]) -> None:
        out = self._out
        async with ThreadedWriter(name=self.name, open=lambda: out, close_target=False) as w:
            try:
                async for event in events:
                    if isinstance(event, StreamError):
                        if clear := self._clear_partial():
                            await w.write(clear)
                        print(f"harken: {event.stream}: {event.message}", file=sys.stderr)
                    elif text := self._render(event):
                        await w.write(text)
            finally:
                if clear := self._clear_partial():
                    w.put(clear)  # never waits: this may run while cancelled
