"""Fan-out of events: one producer, many consumers, each with its own bounded queue.

Overflow policy, per event class:
- replaceable events (partials, levels, stats): when a consumer's queue is full, the newest
  replaces the oldest queued event of the same type and stream (or, failing that, the oldest
  replaceable event is dropped). Each such loss is counted per subscriber.
- everything else (speech boundaries, finals, keywords...): never dropped. A full queue
  blocks the publisher until the slow consumer catches up. The capture is decoupled from the
  bus by its own queue, so a slow sink can delay results but never stop the microphone.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

from harken.engine.events import Event

DEFAULT_QUEUE_SIZE = 256  # events per subscriber


class Subscription:
    """One consumer's queue. Iterate it with `async for`; iteration ends when the bus closes."""

    def __init__(self, *, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"subscription {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0
        self._items: collections.deque[Event] = collections.deque()
        self._closed = False
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    async def _put(self, event: Event) -> None:
        async with self._changed:
            if len(self._items) >= self.maxsize:
                if event.replaceable:
                    self._replace(event)
                    self._changed.notify_all()
                    return
                await self._changed.wait_for(lambda: len(self._items) < self.maxsize)
            self._items.append(event)
            self._changed.notify_all()

    def _replace(self, event: Event) -> None:
        """Queue full and `event` may be lost: keep the newest of its kind, count the loss."""
        self.dropped += 1
        # The older one of its kind goes, else the oldest replaceable one; the newest always
        # joins at the tail, so a consumer never sees it before events published earlier.
        same = [i for i, old in enumerate(self._items)
                if type(old) is type(event) and old.stream == event.stream]
        victims = same or [i for i, old in enumerate(self._items) if old.replaceable]
        if not victims:
            return  # only non-replaceable events queued: the new one is what goes
        del self._items[victims[0]]
        self._items.append(event)

    async def _close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._items) or self._closed)
                if not self._items:
                    return
                event = self._items.popleft()
                self._changed.notify_all()
            yield event


class EventBus:
    """Publishes each event to every subscriber. Subscribe before publishing starts."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._closed = False

    def subscribe(self, name: str, *, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        if self._closed:
            raise RuntimeError("the event bus is closed")
        sub = Subscription(name=name, maxsize=maxsize)
        self._subs.append(sub)
        return sub

    async def publish(self, event: Event) -> None:
        for sub in self._subs:
            await sub._put(event)

    async def close(self) -> None:
        """Ends every subscription's iteration once its queue is drained."""
        self._closed = True
        for sub in self._subs:
            await sub._close()

    def dropped(self) -> dict[str, int]:
        return {sub.name: sub.dropped for sub in self._subs}

    def depth(self) -> dict[str, int]:
        return {sub.name: len(sub) for sub in self._subs}
