"""Harken's own bounded, fair queue for incoming MQTT messages.

    inbox = Inbox(classify=lambda topic: "control" if topic == "harken/den/set" else "other")
    async with open_client(settings, client_id="harken-den", inbox=inbox) as client:
        async for message in client.messages:        # waits for one (or a lost connection)
            handle(message)
            for more in inbox.drain():               # then what else is there, in one go
                handle(more)

Anyone on a shared broker can publish to the topics we subscribe to, as fast as the network
allows. The MQTT library's own queue is one FIFO: a flood on one topic fills it and then
every message is dropped alike, the good satellite's frames and the control commands
included, and the drops are only logged. The inbox replaces that queue (aiomqtt's
`queue_type`):

- Every message is filed by `classify(topic)` into a *family* (a fixed name chosen by the
  owner: `control`, `ha_status`, `audio:<site>`, `audio_new`, ...). Each family has its own
  bounded FIFO (`max_messages` and `max_bytes`); a message that does not fit is dropped and
  counted by the family's *kind* (the name before `:`) in `dropped`, so the counters stay a
  handful of keys however many sites there are.
- Messages leave round-robin across the families that hold any, one at a time: a flood on
  one family gets at most its share of the reader and never drops another family's
  messages. Order within a family (one site's frames, the control topic) is kept.
- `classify` may answer `DISCARD` for a message its owner already has another way (a
  satellite's frame that its own subscription delivers too): dropped at once, counted in
  `discarded`, never queued.
- At most `max_families` families exist at once; messages of further families go to the
  `overflow` family (still bounded, still counted), so a flood of new topic names cannot
  grow the table.

`classify` runs in the socket reader for every message, before anything else: it must be
cheap (a dict look-up or a string compare). If it raises, the message is filed as `other`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterator

import aiomqtt

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGES = 256  # per family
DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # per family: payload bytes waiting
DEFAULT_MAX_FAMILIES = 64
DRAIN_BATCH = 256  # messages handled per wake-up before yielding to the event loop
OVERFLOW = "overflow"
OTHER = "other"
DISCARD = "discard"  # classify's answer for a message the owner knows it does not want


def kind(family: str) -> str:
    """The counter key of a family: `audio:kitchen` counts as `audio`."""
    return family.split(":", 1)[0]


class Inbox:
    """Per-family bounded FIFOs, served round-robin; see the module docstring."""

    def __init__(self, *, classify: Callable[[str], str],
                 max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_families: int = DEFAULT_MAX_FAMILIES, kinds: tuple[str, ...] = ()) -> None:
        if max_messages < 1 or max_bytes < 1 or max_families < 1:
            raise ValueError("max_messages, max_bytes and max_families must be >= 1, got "
                             f"{max_messages}, {max_bytes}, {max_families}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_families = max_families
        self._classify = classify
        # family -> its messages; only families holding messages are kept (bounded table).
        self._families: dict[str, collections.deque[aiomqtt.Message]] = {}
        self._bytes: dict[str, int] = {}
        self._turn: collections.deque[str] = collections.deque()  # round-robin order
        self._size = 0
        # Counters (cumulative).
        self.received = 0
        # By family kind; the expected kinds are listed from the start, so the keys of the
        # stats stay the same whether or not anything was dropped yet.
        self.dropped: dict[str, int] = dict.fromkeys((*kinds, OVERFLOW), 0)
        self.classify_errors = 0
        self.discarded = 0  # classified DISCARD: not wanted, not a loss
        self.peak = 0  # most messages waiting at once

    def __len__(self) -> int:
        return self._size

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def counters(self, prefix: str = "incoming") -> dict[str, int]:
        """Flat counters for the stats event: `<prefix>_dropped_<kind>` for each kind."""
        out = {f"{prefix}_received": self.received, f"{prefix}_dropped": self.dropped_total,
               f"{prefix}_queued": self._size, f"{prefix}_peak": self.peak}
        out.update({f"{prefix}_dropped_{k}": n for k, n in sorted(self.dropped.items())})
        return out

    def family_of(self, topic: str) -> str:
        try:
            family = self._classify(topic)
        except Exception:  # untrusted topic names: a classifier bug must not end the read
            self.classify_errors += 1
            family = OTHER
        if family == DISCARD:
            return family
        if family not in self._families and len(self._families) >= self.max_families - 1:
            family = OVERFLOW  # the last place in the table is kept for it
        return family

    def put(self, message: aiomqtt.Message) -> bool:
        """Files one message; False (and counted) if its family is full. Never raises."""
        self.received += 1
        family = self.family_of(message.topic.value)
        if family == DISCARD:
            self.discarded += 1
            return False
        raw = message.payload
        size = len(raw) if isinstance(raw, (bytes, bytearray)) else 0
        queue = self._families.get(family)
        if queue is None:
            queue = self._families[family] = collections.deque()
            self._bytes[family] = 0
            self._turn.append(family)
        if len(queue) >= self.max_messages or (
                queue and self._bytes[family] + size > self.max_bytes):
            key = kind(family)
            self.dropped[key] = self.dropped.get(key, 0) + 1
            return False
        queue.append(message)
        self._bytes[family] += size
        self._size += 1
        self.peak = max(self.peak, self._size)
        return True

    def get(self) -> aiomqtt.Message:
        """The head of the next family in turn; IndexError when empty."""
        while self._turn:
            family = self._turn.popleft()
            queue = self._families[family]
            if not queue:  # created by a put that was dropped: forget it
                del self._families[family], self._bytes[family]
                continue
            message = queue.popleft()
            self._size -= 1
            raw = message.payload
            self._bytes[family] -= len(raw) if isinstance(raw, (bytes, bytearray)) else 0
            if queue:
                self._turn.append(family)
            else:
                del self._families[family], self._bytes[family]
            return message
        raise IndexError("the inbox is empty")

    def drain(self, limit: int = DRAIN_BATCH) -> Iterator[aiomqtt.Message]:
        """Up to `limit` waiting messages, fairly interleaved, without waiting."""
        for _ in range(limit):
            if not self._size:
                return
            yield self.get()

    def clear(self) -> None:
        self._families.clear()
        self._bytes.clear()
        self._turn.clear()
        self._size = 0

    def queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """An asyncio.Queue class for aiomqtt's `queue_type` that files into this inbox."""
        inbox = self

        class _InboxQueue(asyncio.Queue[aiomqtt.Message]):
            # The hooks asyncio.Queue's subclasses (PriorityQueue, LifoQueue) override.
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(0)  # never "full": the inbox bounds and counts itself

            def _init(self, maxsize: int) -> None:
                self._queue = inbox  # empty() and qsize() read len() of it

            def _put(self, item: aiomqtt.Message) -> None:
                inbox.put(item)

            def _get(self) -> aiomqtt.Message:
                return inbox.get()

            def qsize(self) -> int:
                return len(inbox)

        return _InboxQueue
