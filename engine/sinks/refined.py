"""Finals with their refined text, for sinks that write each caption once (SRT, VTT, TXT).

`RefinedFinals(sink, max_wait_s=...)` is a Sink that feeds `sink` the same events, except
that each `CaptionFinal` is held until its `CaptionRefined` arrives and then passed on with
the text and words that stand (the refined ones when accepted; the speaker stays). A final
whose refinement has not come `max_wait_s` after the final itself is passed on as it is, the
CTC text (counted in `fallbacks`). `max_wait_s=None` waits for every refinement (files and
`--fast`: the refine stage emits one per segment, so the output never depends on timing).

Events behind a held final wait with it, so the order is kept; at most MAX_HELD events are
held (beyond that the oldest final goes out as it is, counted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterable, AsyncIterator

from harken.engine.events import CaptionFinal, CaptionRefined, Event
from harken.engine.sinks.base import Sink

MAX_HELD = 512  # events held behind finals that wait for their refinement
RECENT_KEPT = 64  # refinements remembered that came before their final (not expected)

_Key = tuple[str, int]  # (stream, segment)


class RefinedFinals:
    """A Sink wrapper; see the module docstring."""

    def __init__(self, sink: Sink, *, max_wait_s: float | None) -> None:
        if max_wait_s is not None and max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0 or None, got {max_wait_s}")
        self.sink = sink
        self.name = sink.name
        self.max_wait_s = max_wait_s
        self.refined = 0  # finals passed on with their refinement's text
        self.fallbacks = 0  # finals passed on with the CTC text: too late, or overflow

    async def consume(self, events: AsyncIterable[Event]) -> None:
        await self.sink.consume(self.settle(events))

    async def settle(self, events: AsyncIterable[Event]) -> AsyncIterator[Event]:
        source = aiter(events)
        held: collections.deque[tuple[Event, float]] = collections.deque()  # (event, since)
        waiting: set[_Key] = set()  # finals in `held` still waiting
        early: collections.OrderedDict[_Key, CaptionRefined] = collections.OrderedDict()
        results: dict[_Key, CaptionRefined] = {}
        pending: asyncio.Task[Event] | None = None
        try:
            while True:
                # Pass on everything at the head that no longer waits.
                while held:
                    event, since = held[0]
                    if isinstance(event, CaptionFinal):
                        key = (event.stream, event.segment)
                        timed_out = (self.max_wait_s is not None
                                     and time.monotonic() - since >= self.max_wait_s)
                        if key in waiting and not timed_out and len(held) <= MAX_HELD:
                            break
                        waiting.discard(key)
                        yield self._settled(event, results.pop(key, None))
                    else:
                        yield event
                    held.popleft()
                timeout = None
                if held and self.max_wait_s is not None:
                    timeout = max(0.0, held[0][1] + self.max_wait_s - time.monotonic())
                if pending is None:
                    pending = asyncio.ensure_future(anext(source))
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if not done:
                    continue  # the head final waited long enough: loop passes it on
                task, pending = pending, None
                try:
                    event = task.result()
                except StopAsyncIteration:
                    break
                now = time.monotonic()
                if isinstance(event, CaptionRefined):
                    key = (event.stream, event.segment)
                    if key in waiting:
                        results[key] = event
                        waiting.discard(key)
                    else:
                        early[key] = event
                        while len(early) > RECENT_KEPT:
                            early.popitem(last=False)
                    if held:
                        held.append((event, now))
                    else:
                        yield event
                    continue
                if isinstance(event, CaptionFinal):
                    key = (event.stream, event.segment)
                    came = early.pop(key, None)
                    if came is not None:
                        results[key] = came
                    else:
                        waiting.add(key)
                    held.append((event, now))
                    continue
                if held:
                    held.append((event, now))
                else:
                    yield event
            # The bus closed: whatever still waits gets the CTC text.
            for event, _ in held:
                if isinstance(event, CaptionFinal):
                    yield self._settled(event, results.pop((event.stream, event.segment),
                                                           None))
                else:
                    yield event
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending

    def _settled(self, final: CaptionFinal, refined: CaptionRefined | None) -> CaptionFinal:
        if refined is None:
            self.fallbacks += 1
            return final
        self.refined += refined.accepted
        return dataclasses.replace(final, text=refined.text, words=refined.words)
