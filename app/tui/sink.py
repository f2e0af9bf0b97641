"""The TUI sink: reads its own bus subscription and posts one Textual message per event.

Posting never waits (Textual's queue takes the message at once), so the sink drains its
subscription as fast as the engine fills it and never holds the engine back. The bursts that
could pile up in the app's queue are the high-rate kinds, and those coalesce there
(`can_replace` in messages.py). Events the UI has no view for are counted and skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol

from textual.message import Message

from harken.app.tui.messages import to_message
from harken.engine.events import Event


class MessageTarget(Protocol):
    """What the sink posts to: a Textual App (or any message pump)."""

    def post_message(self, message: Message) -> bool: ...


class TuiSink:
    """A Sink (engine/sinks/files.py) whose output is the terminal app."""

    def __init__(self, *, target: MessageTarget, name: str = "tui") -> None:
        self.name = name
        self._target = target
        self.posted = 0
        self.skipped = 0  # events without a view, or posted after the app closed

    async def consume(self, events: AsyncIterable[Event]) -> None:
        # Keep draining even once the app is closing: the bus must never wait on us.
        async for event in events:
            message = to_message(event)
            if message is not None and self._target.post_message(message):
                self.posted += 1
            else:
                self.skipped += 1
