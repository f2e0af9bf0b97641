"""The captions log: finals scroll up with time and speaker; the current partial of each
stream is shown in place below them, dimmed, and replaced by its final."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from harken.app.tui.colours import SpeakerColours
from harken.engine.events import CaptionFinal, CaptionPartial

MAX_CAPTIONS = 500  # final lines kept on screen; older ones scroll away for good
PLACEHOLDER = "Listening… captions appear here."


def clock(seconds: float) -> str:
    """Stream time as m:ss (h:mm:ss past an hour)."""
    whole = max(0, int(seconds))
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptionEntry:
    stream: str
    segment: int
    start: float
    text: str
    speaker: str | None = None
    translations: tuple[tuple[str, str], ...] = ()  # (lang, text)


class CaptionLine(Static):
    """One final caption (and its translations when they are shown inline)."""

    def __init__(self, entry: CaptionEntry, *, colours: SpeakerColours, show_stream: bool,
                 inline_translations: bool) -> None:
        super().__init__(classes="caption")
        self.entry = entry
        self._colours = colours
        self._show_stream = show_stream
        self._inline = inline_translations
        self._redraw()

    def set_entry(self, entry: CaptionEntry) -> None:
        self.entry = entry
        self._redraw()

    def set_inline_translations(self, on: bool) -> None:
        self._inline = on
        self._redraw()

    def _redraw(self) -> None:
        e = self.entry
        text = Text(no_wrap=False)
        text.append(clock(e.start), style="dim")
        if self._show_stream:
            text.append(f" {e.stream}", style="dim italic")
        if e.speaker:
            text.append(f" {e.speaker}", style=f"bold {self._colours.colour(e.speaker)}")
        text.append(" ")
        text.append(e.text)
        if self._inline:
            for lang, translated in e.translations:
                text.append(f"\n   ↳ {lang}: " if lang else "\n   ↳ ", style="dim")
                text.append(translated, style="italic")
        self.update(text)


class CaptionsLog(VerticalScroll):
    """Finals as CaptionLine children, then one dimmed partial line per active stream."""

    def __init__(self, *, colours: SpeakerColours, show_streams: bool = False,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self._colours = colours
        self._show_streams = show_streams  # else only once a second stream is heard
        self._partials: dict[str, Static] = {}
        self._partial_text: dict[str, str] = {}
        self._streams: set[str] = set()
        self._inline_translations = True
        self.border_title = "Captions"

    def compose(self) -> ComposeResult:
        yield Static(PLACEHOLDER, id="captions-placeholder")

    def on_mount(self) -> None:
        self.anchor()  # follow new captions until the user scrolls up

    @property
    def lines(self) -> list[CaptionLine]:
        return list(self.query(CaptionLine))

    @property
    def partial_texts(self) -> dict[str, str]:
        """The partial shown for each stream ('' when none)."""
        return dict(self._partial_text)

    def _named(self) -> bool:
        """Lines name their stream: always (satellites), else from the second stream on."""
        return self._show_streams or len(self._streams) > 1

    def _placeholder(self, visible: bool) -> None:
        self.query_one("#captions-placeholder", Static).display = visible

    def show_partial(self, event: CaptionPartial) -> None:
        self._streams.add(event.stream)
        text = event.text.strip()
        self._partial_text[event.stream] = text
        widget = self._partials.get(event.stream)
        if widget is None:
            widget = Static(classes="partial")
            self._partials[event.stream] = widget
            self.mount(widget)
        widget.update(Text.assemble((clock(event.start) + " ", "dim"),
                                    (f"{event.stream} " if self._named() else "",
                                     "dim italic"),
                                    (text, "dim italic")))
        widget.display = bool(text)
        if text:
            self._placeholder(False)

    def add_final(self, event: CaptionFinal) -> None:
        """Replace the stream's partial by this final (nothing is added for empty text)."""
        self._streams.add(event.stream)
        partial = self._partials.get(event.stream)
        if partial is not None:
            partial.display = False
            self._partial_text[event.stream] = ""
        if not event.text.strip():
            return
        entry = CaptionEntry(stream=event.stream, segment=event.segment, start=event.start,
                             text=event.text.strip(), speaker=event.speaker)
        line = CaptionLine(entry, colours=self._colours, show_stream=self._named(),
                           inline_translations=self._inline_translations)
        first_partial = next(iter(self._partials.values()), None)
        if first_partial is not None:
            self.mount(line, before=first_partial)
        else:
            self.mount(line)
        self._placeholder(False)
        lines = self.lines
        if len(lines) > MAX_CAPTIONS:
            for old in lines[: len(lines) - MAX_CAPTIONS]:
                old.remove()

    def replace_text(self, *, stream: str, segment: int, text: str) -> bool:
        """The refined text of a caption replaces its CTC text in place (an empty final that
        was not shown gets no line)."""
        for line in reversed(self.lines):
            e = line.entry
            if e.stream == stream and e.segment == segment:
                if text.strip():
                    line.set_entry(dataclasses.replace(e, text=text.strip()))
                return True
        return False

    def add_translation(self, *, stream: str, segment: int | None, lang: str,
                        text: str) -> bool:
        """Attach a translation to its caption (the newest of the stream if no segment)."""
        for line in reversed(self.lines):
            e = line.entry
            if e.stream == stream and (segment is None or e.segment == segment):
                line.set_entry(dataclasses.replace(
                    e, translations=(*e.translations, (lang, text))))
                return True
        return False

    def set_inline_translations(self, on: bool) -> None:
        self._inline_translations = on
        for line in self.lines:
            line.set_inline_translations(on)

    def clear_captions(self) -> None:
        for line in self.lines:
            line.remove()
        for stream, partial in self._partials.items():
            partial.display = False
            self._partial_text[stream] = ""
        self._placeholder(True)
