"""One set of sinks per stream: with several satellites, each site gets its own files.

Streams have independent clocks (each satellite counts its own samples), so their cues
must never share one SRT. `PerStreamSink` makes a stream's sinks with `make(stream_id)` on
its first caption final with text, replays the events it held for that stream until then,
and feeds them through their own bus; they close when the run ends. A stream that never
says anything (noise published under made-up site names) gets no files, and what is held
for it is bounded: PENDING_EVENTS per stream, PENDING_STREAMS streams (the oldest dropped
first). At most `max_streams` streams get files; events of streams beyond are counted in
`dropped_events`, with one warning.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import AsyncIterable, Callable

from harken.engine.bus import EventBus
from harken.engine.events import CaptionFinal, Event
from harken.engine.sinks.base import Sink

log = logging.getLogger(__name__)

MAX_STREAMS = 64  # streams that get their own sinks
PENDING_EVENTS = 256  # events held per stream until its first caption (the newest kept)
PENDING_STREAMS = 256  # streams held at once; beyond, the longest-held is let go
_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def file_stem(stream_id: str) -> str:
    """A stream id as a file name part: letters, digits, '_', '-', '.'; never '..'."""
    return _FILE_UNSAFE.sub("_", stream_id).strip("._") or "stream"


class PerStreamSink:
    def __init__(self, *, make: Callable[[str], list[Sink]], name: str = "per-stream",
                 max_streams: int = MAX_STREAMS) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.name = name
        self._make = make
        self._max_streams = max_streams
        self.streams: list[str] = []
        self.dropped_events = 0
        self._warned = False

    async def consume(self, events: AsyncIterable[Event]) -> None:
        buses: dict[str, EventBus] = {}
        pending: collections.OrderedDict[str, collections.deque[Event]] = \
            collections.OrderedDict()
        async with asyncio.TaskGroup() as tg:
            try:
                async for event in events:
                    bus = buses.get(event.stream)
                    if bus is None:
                        held = pending.get(event.stream)
                        if held is None:
                            if len(pending) >= PENDING_STREAMS:
                                _, dropped = pending.popitem(last=False)
                                self.dropped_events += len(dropped)
                            held = pending[event.stream] = collections.deque(
                                maxlen=PENDING_EVENTS)
                        if len(held) == held.maxlen:
                            self.dropped_events += 1
                        held.append(event)
                        if not (isinstance(event, CaptionFinal) and event.text.strip()):
                            continue
                        del pending[event.stream]
                        bus = self._open(event.stream, buses, tg)
                        if bus is None:
                            self.dropped_events += len(held)
                            continue
                        for early in held:
                            await bus.publish(early)
                        continue
                    await bus.publish(event)
            finally:
                for bus in buses.values():
                    await bus.close()  # each stream's sinks write what is queued and close

    def _open(self, stream: str, buses: dict[str, EventBus],
              tg: asyncio.TaskGroup) -> EventBus | None:
        """A stream's own bus with its sinks subscribed; None beyond max_streams."""
        if len(buses) >= self._max_streams:
            if not self._warned:
                self._warned = True
                log.warning("more than %d streams: results of stream %r and later ones are "
                            "not written to files", self._max_streams, stream)
            return None
        bus = buses[stream] = EventBus()
        self.streams.append(stream)
        for sink in self._make(stream):
            tg.create_task(sink.consume(bus.subscribe(sink.name)),
                           name=f"{self.name}-{sink.name}-{stream}")
        return bus
