"""Keyword log: hits with stream time and score, newest first; a new hit glows briefly."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from harken.app.tui.widgets.captions import clock

MAX_HITS = 200  # rows kept
FRESH_S = 2.0  # s a new hit stays highlighted
PLACEHOLDER = "No keyword hits."


class KeywordRow(Static):
    def __init__(self, *, keyword: str, start: float, score: float | None) -> None:
        super().__init__(classes="keyword -fresh")
        self.keyword = keyword
        score_text = f"{score:.2f}" if score is not None else "–"
        self.update(Text.assemble((clock(start), "dim"), " ", (keyword, "bold"), " ",
                                  (score_text, "dim")))


class KeywordLog(VerticalScroll):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "Keywords"

    def compose(self) -> ComposeResult:
        yield Static(PLACEHOLDER, id="keywords-placeholder")

    @property
    def rows(self) -> list[KeywordRow]:
        return list(self.query(KeywordRow))

    def add_hit(self, *, keyword: str, start: float, score: float | None) -> KeywordRow:
        row = KeywordRow(keyword=keyword, start=start, score=score)
        rows = self.rows
        if rows:
            self.mount(row, before=rows[0])
        else:
            self.mount(row)
        self.query_one("#keywords-placeholder").display = False
        self.set_timer(FRESH_S, lambda: row.remove_class("-fresh"), name="keyword-fresh")
        for old in rows[MAX_HITS - 1:]:
            old.remove()
        self.scroll_home(animate=False)
        return row

    def clear_hits(self) -> None:
        for row in self.rows:
            row.remove()
        self.query_one("#keywords-placeholder").display = True
