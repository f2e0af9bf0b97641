"""Captions, translations and keywords printed to a terminal or a pipe.

The text goes out through a ThreadedWriter (engine/sinks/writer.py): a terminal nobody reads
(`harken run --jsonl | less`, paused) blocks only this sink, never the event loop, and with
it MQTT, the UI and the other sinks.
"""

from __future__ import annotations

import collections
import shutil
import sys
from collections.abc import AsyncIterable, AsyncIterator
from typing import IO

from rich.cells import cell_len

from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    CaptionRefined,
    Event,
    Keyword,
    StreamError,
    Translation,
)
from harken.engine.sinks.writer import Handover, ThreadedWriter


def _clock(seconds: float) -> str:
    m, s = divmod(max(0.0, seconds), 60)
    return f"{int(m):02d}:{s:05.2f}"


SPEAKERS_KEPT = 64  # finals whose speaker is remembered for their refinement



def _tail_cells(text: str, cells: int) -> str:
    """The end of `text` that fits in `cells` terminal cells (wide characters take two)."""
    used = 0
    for i in range(len(text) - 1, -1, -1):
        used += cell_len(text[i])
        if used > cells:
            return text[i + 1:]
    return text

class PrinterSink:
    """Terminal output: on a TTY the current partial is redrawn in place and finals get
    their own lines; on a pipe only finals are printed.

    Lines name their stream (`kitchen [00:01.20 → 00:03.40] ...`) once a second stream has
    been heard, or always with show_stream=True.

    An accepted refinement (caption_refined) replaces its final in place when that final is
    still the last line on a TTY; otherwise (later lines, or a pipe) it is printed as a line
    of its own, marked `refined:`.
    """

    _out: IO[str] | Handover  # the stream; while consuming, the hand-over to its writer thread

    def __init__(self, *, stream: IO[str] | None = None, tty: bool | None = None,
                 show_stream: bool = False, name: str = "printer") -> None:
        self.name = name
        self._out = stream if stream is not None else sys.stdout
        self._tty = self._out.isatty() if tty is None else tty
        self._show_stream = show_stream
        self._first_stream: str | None = None  # until a second stream shows up
        self._partial_shown = False
        self._last_final: tuple[str, int] | None = None  # (stream, segment) of the last line
        self._last_rows = 0  # terminal rows that line took
        self._speakers: collections.OrderedDict[tuple[str, int], str] = \
            collections.OrderedDict()

    def _label(self, event: Event) -> str:
        span = f"[{_clock(event.start)} → {_clock(event.end)}]"
        if not self._show_stream:
            # Lines name their stream from the moment a second one (a satellite) speaks.
            self._first_stream = self._first_stream or event.stream
            self._show_stream = event.stream != self._first_stream
        return f"{event.stream} {span}" if self._show_stream else span

    def _write_line(self, line: str, *, final: tuple[str, int] | None = None) -> None:
        self._out.write(line + "\n")
        width = max(1, shutil.get_terminal_size((80, 24)).columns)
        self._last_final = final
        # Screen cells, not characters: a wide (CJK) character takes two, a combining one none.
        self._last_rows = max(1, -(-cell_len(line) // width))

    def _show_refined(self, event: CaptionRefined) -> None:
        key = (event.stream, event.segment)
        speaker = self._speakers.get(key, "")
        if not event.accepted or not event.text.strip():
            return  # the CTC final stands as printed
        self._clear_partial()
        if self._tty and self._last_final == key:
            # Up to the final's first row, clear to the end of the screen, print again.
            self._out.write(f"\x1b[{self._last_rows}F\x1b[0J")
            self._write_line(f"{self._label(event)}{speaker} {event.text.strip()}", final=key)
        else:
            self._write_line(f"{self._label(event)}{speaker} refined: {event.text.strip()}")
        self._out.flush()

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
                    if cell_len(line) > width - 1:
                        line = "…" + _tail_cells(line, width - 2)
                    self._out.write(f"\r\x1b[2K\x1b[2m{line}\x1b[0m")
                    self._partial_shown = True
                    self._out.flush()
                elif isinstance(event, CaptionFinal):
                    self._clear_partial()
                    speaker = f" {event.speaker}:" if event.speaker else ""
                    key = (event.stream, event.segment)
                    self._speakers[key] = speaker
                    while len(self._speakers) > SPEAKERS_KEPT:
                        self._speakers.popitem(last=False)
                    if event.text.strip():
                        self._write_line(f"{self._label(event)}{speaker} {event.text.strip()}",
                                         final=key)
                    self._out.flush()
                elif isinstance(event, CaptionRefined):
                    self._show_refined(event)
                elif isinstance(event, Translation) and event.text.strip():
                    self._clear_partial()
                    self._write_line(f"{self._label(event)} [{event.lang}] {event.text.strip()}")
                    self._out.flush()
                elif isinstance(event, Keyword):
                    self._clear_partial()
                    self._write_line(f"{self._label(event)} keyword: {event.keyword} "
                                     f"({event.score:.2f})")
                    self._out.flush()
                elif isinstance(event, StreamError):
                    self._clear_partial()
                    print(f"harken: {event.stream}: {event.message}", file=sys.stderr)
                    self._last_final = None  # on a TTY that line went below the final
        finally:
            self._clear_partial()
            self._out.flush()
