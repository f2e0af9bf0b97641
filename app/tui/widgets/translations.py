"""Translation pane: translations in their own scrolling pane (toggled with `t`; otherwise
they are shown under their caption)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from harken.app.tui.widgets.captions import clock

MAX_TRANSLATIONS = 500  # lines kept
PLACEHOLDER = "No translations (the translation task is off, or nothing was said yet)."


class TranslationLine(Static):
    def __init__(self, *, start: float, lang: str, text: str) -> None:
        super().__init__(classes="translation")
        self.translated = text
        self.update(Text.assemble((clock(start), "dim"), " ", (lang or "?", "bold magenta"),
                                  " ", (text, "italic")))


class TranslationPane(VerticalScroll):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "Translations"

    def compose(self) -> ComposeResult:
        yield Static(PLACEHOLDER, id="translations-placeholder")

    def on_mount(self) -> None:
        self.anchor()

    @property
    def lines(self) -> list[TranslationLine]:
        return list(self.query(TranslationLine))

    def add_translation(self, *, start: float, lang: str, text: str) -> None:
        self.mount(TranslationLine(start=start, lang=lang, text=text))
        self.query_one("#translations-placeholder").display = False
        lines = self.lines
        for old in lines[: max(0, len(lines) - MAX_TRANSLATIONS)]:
            old.remove()

    def clear_translations(self) -> None:
        for line in self.lines:
            line.remove()
        self.query_one("#translations-placeholder").display = True
