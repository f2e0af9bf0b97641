"""What a sink is: a consumer of the event bus that writes results somewhere.

Each sink reads its own Subscription (`async for event in events`), so a slow one never
slows another.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol

from harken.engine.events import Event


class Sink(Protocol):
    name: str

    async def consume(self, events: AsyncIterable[Event]) -> None: ...
