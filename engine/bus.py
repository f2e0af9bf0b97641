"""Fan-out of events: one producer, many consumers, each with its own bounded queue.

Every sink reads its own Subscription on its own task, so what one sink does (a slow disk, a
terminal nobody reads, a broker that is down) does not reach another. When a consumer's
queue is full:
- replaceable events (partials, levels, stats) coalesce: the newest replaces the oldest
  queued event of the same type and stream (or, failing that, the oldest replaceable event).
  Each such loss is counted per subscriber (`dropped`).
- any other event (speech boundaries, finals, keywords...) depends on the bus's mode:
  - lossless (files, `--fast`): the publisher waits until that consumer catches up, so every
    sink gets every event and results never depend on timing;
  - live: the publisher never waits. The event takes the place of a queued replaceable one;
    when there is none it is lost for that one consumer and counted (`lost`). A consumer
    that keeps up, however late, loses nothing (finals come a few a second at most, and the
    queue holds DEFAULT_QUEUE_SIZE); only one that stops reading does, and the others and
    the engine go on.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

from harken.engine.events import Event

DEFAULT_QUEUE_SIZE = 256  # events per subscriber


class Subscription:
    """One consumer's queue. Iterate it with `async for`; iteration ends when the bus closes."""

    def __init__(self, *, name: str, maxsize: int, lossless: bool = True) -> None:
        if maxsize < 1:
            raise ValueError(f"subscription {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.lossless = lossless
        self.dropped = 0  # replaceable events coalesced away
        self.lost = 0  # other events lost because this consumer had stopped reading (live)
        self._items: collections.deque[Event] = collections.deque()
        self._closed = False
        self._readable = asyncio.Event()  # set: items queued, or closed
        self._writable = asyncio.Event()  # set: an item was taken since a publisher waited

    def __len__(self) -> int:
        return len(self._items)

    async def _put(self, event: Event) -> None:
        """Lossless: wait for room unless `event` may be replaced."""
        while self.lossless and not event.replaceable and len(self._items) >= self.maxsize:
            self._writable.clear()
            await self._writable.wait()
        self._offer(event)

    def _offer(self, event: Event) -> None:
        """Never waits: queue `event`, making room by the overflow policy when full."""
        if len(self._items) < self.maxsize:
            self._items.append(event)
        elif not self._replace(event):
            return
        self._readable.set()

    def _replace(self, event: Event) -> bool:
        """Queue full: `event` takes the place of a replaceable one (counted in `dropped`),
        else it is lost (counted). The newcomer always joins at the tail, so a consumer never
        sees it before events published earlier. True if `event` was queued."""
        victims: list[int] = []
        if event.replaceable:  # the older one of its kind goes first
            victims = [i for i, old in enumerate(self._items)
                       if type(old) is type(event) and old.stream == event.stream]
        victims = victims or [i for i, old in enumerate(self._items) if old.replaceable]
        if not victims:
            # Only events that may not be replaced are queued: the new one is what goes.
            if event.replaceable:
                self.dropped += 1
            else:
                self.lost += 1
            return False
        self.dropped += 1
        del self._items[victims[0]]
        self._items.append(event)
        return True

    def _close(self) -> None:
        self._closed = True
        self._readable.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            while not self._items:
                if self._closed:
                    return
                self._readable.clear()
                await self._readable.wait()
            event = self._items.popleft()
            self._writable.set()
            yield event


class EventBus:
    """Publishes each event to every subscriber. Subscribe before publishing starts.

    `lossless=True` (files, `--fast`): a full queue makes the publisher wait. False (live):
    publishing never waits; see the module docstring for what a stalled consumer loses.
    """

    def __init__(self, *, lossless: bool = True) -> None:
        self.lossless = lossless
        self._subs: list[Subscription] = []
        self._closed = False

    def subscribe(self, name: str, *, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        if self._closed:
            raise RuntimeError("the event bus is closed")
        sub = Subscription(name=name, maxsize=maxsize, lossless=self.lossless)
        self._subs.append(sub)
        return sub

    async def publish(self, event: Event) -> None:
        if not self.lossless:
            for sub in self._subs:
                sub._offer(event)
            return
        for sub in self._subs:
            await sub._put(event)

    async def close(self) -> None:
        """Ends every subscription's iteration once its queue is drained."""
        self._closed = True
        for sub in self._subs:
            sub._close()

    def dropped(self) -> dict[str, int]:
        """Replaceable events coalesced away, per subscriber."""
        return {sub.name: sub.dropped for sub in self._subs}

    def lost(self) -> dict[str, int]:
        """Other events lost by a subscriber that stopped reading (live only)."""
        return {sub.name: sub.lost for sub in self._subs}

    def depth(self) -> dict[str, int]:
        return {sub.name: len(sub) for sub in self._subs}
