"""Speaker timeline: who spoke when over the last few minutes, one coloured row per speaker.

The first row is the VAD's speech activity (always known); speaker rows come from speaker
turns (diarization) or, while there are none, from the finals that carry a speaker. The
window grows with the session up to WINDOW_MAX_S and then slides with the stream clock.
"""

from __future__ import annotations

import collections
import math

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from harken.app.tui.colours import SPEECH_COLOUR, SpeakerColours
from harken.app.tui.widgets.captions import clock

WINDOW_MIN_S = 30.0  # s shown at least (early in a session the bars fill the width)
WINDOW_MAX_S = 180.0  # s shown at most: "the last few minutes"
MAX_SPANS = 1_000  # spans kept per row; older ones are off screen anyway
LABEL_WIDTH = 11  # columns for the row label
SPEECH_LABEL = "speech"

Span = tuple[float, float]


class SpeakerTimeline(Widget):
    """A live chart; the app feeds it spans and the current stream time."""

    def __init__(self, *, colours: SpeakerColours, id: str | None = None) -> None:
        super().__init__(id=id)
        self._colours = colours
        self._speech: dict[str, collections.deque[Span]] = {}
        self._open_speech: dict[str, float] = {}
        self._turns: dict[str, collections.deque[Span]] = {}  # from speaker_turn events
        self._caption_turns: dict[str, collections.deque[Span]] = {}  # from finals
        self.now = 0.0
        self.border_title = "Speakers"

    def _row(self, rows: dict[str, collections.deque[Span]], key: str) -> \
            collections.deque[Span]:
        row = rows.get(key)
        if row is None:
            row = rows[key] = collections.deque(maxlen=MAX_SPANS)
        return row

    def advance(self, now: float) -> None:
        if now > self.now:
            self.now = now
            self.refresh()

    def speech_started(self, stream: str, start: float) -> None:
        self._open_speech[stream] = start
        self._row(self._speech, stream)
        self.advance(start)

    def speech_ended(self, stream: str, start: float, end: float) -> None:
        self._open_speech.pop(stream, None)
        self._row(self._speech, stream).append((start, end))
        self.advance(end)
        self.refresh()

    def add_turn(self, speaker: str, start: float, end: float, *,
                 from_caption: bool = False) -> None:
        self._colours.colour(speaker)  # first appearance fixes the colour
        rows = self._caption_turns if from_caption else self._turns
        self._row(rows, speaker).append((start, end))
        self.advance(end)
        self.refresh(layout=True)

    @property
    def _rows(self) -> dict[str, collections.deque[Span]]:
        return self._turns or self._caption_turns

    @property
    def speakers(self) -> list[str]:
        """Speaker rows, top to bottom."""
        rows = self._rows
        return [s for s in self._colours.speakers if s in rows]

    def spans(self, speaker: str) -> list[Span]:
        return list(self._rows.get(speaker, ()))

    def clear_timeline(self) -> None:
        self._speech.clear()
        self._open_speech.clear()
        self._turns.clear()
        self._caption_turns.clear()
        self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 + max(1, len(self._speech)) + len(self._rows)

    def _bar(self, spans: list[Span], *, t0: float, cell_s: float, cells: int,
             colour: str) -> Text:
        filled = [False] * cells
        for start, end in spans:
            if end < t0 or start > self.now:
                continue
            first = max(0, math.floor((start - t0) / cell_s))
            last = min(cells - 1, max(first, math.ceil((end - t0) / cell_s) - 1))
            for i in range(first, last + 1):
                filled[i] = True
        bar = Text()
        for on in filled:
            bar.append("█" if on else "·", style=colour if on else "grey23")
        return bar

    def render(self) -> Text:
        cells = max(4, self.size.width - LABEL_WIDTH)
        window = min(WINDOW_MAX_S, max(WINDOW_MIN_S, self.now))
        t0 = self.now - window if self.now > window else 0.0
        cell_s = window / cells
        out = Text(no_wrap=True, overflow="crop")
        streams = list(self._speech) or [""]
        for stream in streams:
            label = SPEECH_LABEL if len(streams) == 1 else stream
            spans = list(self._speech.get(stream, ()))
            if stream in self._open_speech:
                spans.append((self._open_speech[stream], self.now))
            out.append(f"{label[: LABEL_WIDTH - 1]:<{LABEL_WIDTH}}", style="dim")
            out.append_text(self._bar(spans, t0=t0, cell_s=cell_s, cells=cells,
                                      colour=SPEECH_COLOUR))
            out.append("\n")
        for speaker in self.speakers:
            colour = self._colours.colour(speaker)
            out.append(f"{speaker[: LABEL_WIDTH - 1]:<{LABEL_WIDTH}}", style=f"bold {colour}")
            out.append_text(self._bar(self.spans(speaker), t0=t0, cell_s=cell_s,
                                      cells=cells, colour=colour))
            out.append("\n")
        left, right = clock(t0), clock(t0 + window)
        out.append(" " * LABEL_WIDTH + left + " " * max(1, cells - len(left) - len(right))
                   + right, style="dim")
        return out
