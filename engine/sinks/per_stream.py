"""One set of sinks per stream: with several satellites, each site gets its own files.

Streams have independent clocks (each satellite counts its own samples), so their cues
must never share one SRT. `PerStreamSink` makes a stream's sinks on its first event, with
`make(stream_id)`, and feeds them through their own bus; they close when the run ends.
At most `max_streams` streams get files (sites come and go on a shared broker); events of
streams beyond are counted in `dropped_events`, with one warning.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterable, Callable

from harken.engine.bus import EventBus
from harken.engine.events import Event
from harken.engine.sinks.base import Sink

log = logging.getLogger(__name__)

MAX_STREAMS = 64  # streams that get their own sinks
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

    async def consume(self, events: AsyncIterable[Event]) -> None:
        buses: dict[str, EventBus] = {}
        async with asyncio.TaskGroup() as tg:
            try:
                async for event in events:
                    bus = buses.get(event.stream)
                    if bus is None:
                        if len(buses) >= self._max_streams:
                            if not self.dropped_events:
                                log.warning("more than %d streams: results of stream %r and "
                                            "later ones are not written to files",
                                            self._max_streams, event.stream)
                            self.dropped_events += 1
                            continue
                        bus = buses[event.stream] = EventBus()
                        self.streams.append(event.stream)
                        for sink in self._make(event.stream):
                            tg.create_task(sink.consume(bus.subscribe(sink.name)),
                                           name=f"{self.name}-{sink.name}-{event.stream}")
                    await bus.publish(event)
            finally:
                for bus in buses.values():
                    await bus.close()  # each stream's sinks write what is queued and close
