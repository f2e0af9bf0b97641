"""Help: the keys and what they do (also reachable from the command palette)."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

#: (key, action) shown in the help; the bindings themselves live on the app.
KEYS = (
    ("space", "pause / resume listening"),
    ("c", "clear the logs on screen (an export still has everything)"),
    ("t", "translations under captions / in their own pane"),
    ("d", "diarization on / off"),
    ("e", "export the session (SRT, VTT, JSONL, TXT, RTTM)"),
    ("ctrl+p", "command palette (every action by name)"),
    ("?", "this help"),
    ("q / ctrl+c", "quit (every output file is flushed)"),
)


def help_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key, action in KEYS:
        table.add_row(key, action)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_help", "Close", show=False),
        Binding("question_mark", "dismiss_help", "Close", show=False),
        Binding("q", "dismiss_help", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static("Harken — keys", id="help-title")
            yield Static(help_table(), id="help-keys")
            yield Static("escape closes this help", id="help-hint")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
