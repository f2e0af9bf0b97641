"""Fan-out: every subscriber sees every final in order; partials coalesce; drops are counted."""

from __future__ import annotations

import asyncio

from harken.engine.bus import EventBus
from harken.engine.events import CaptionFinal, CaptionPartial, Event


def partial(i: int, stream: str = "s") -> CaptionPartial:
    return CaptionPartial(stream=stream, start=0.0, end=float(i), segment=0, text=f"p{i}")


def final(i: int, stream: str = "s") -> CaptionFinal:
    return CaptionFinal(stream=stream, start=float(i), end=float(i) + 1, segment=i, text=f"f{i}")


async def collect(sub: object) -> list[Event]:
    return [e async for e in sub]  # type: ignore[attr-defined]


async def test_every_subscriber_gets_everything_in_order() -> None:
    bus = EventBus()
    a, b = bus.subscribe("a"), bus.subscribe("b")
    events = [final(i) for i in range(5)]
    for e in events:
        await bus.publish(e)
    await bus.close()
    assert await collect(a) == events
    assert await collect(b) == events
    assert bus.dropped() == {"a": 0, "b": 0}


async def test_slow_consumer_blocks_finals_never_drops_them() -> None:
    bus = EventBus()
    slow = bus.subscribe("slow", maxsize=2)
    received: list[Event] = []

    async def consume() -> None:
        async for e in slow:
            await asyncio.sleep(0.01)
            received.append(e)

    task = asyncio.create_task(consume())
    for i in range(10):
        await bus.publish(final(i))
        assert len(slow) <= 2  # bounded: the publisher waited instead
    await bus.close()
    await task
    assert [e.text for e in received] == [f"f{i}" for i in range(10)]  # type: ignore[attr-defined]
    assert bus.dropped()["slow"] == 0


async def test_partials_coalesce_newest_wins_and_drops_are_counted() -> None:
    bus = EventBus()
    sub = bus.subscribe("ui", maxsize=3)
    first = final(0)
    await bus.publish(first)
    for i in range(10):
        await bus.publish(partial(i))  # never blocks, even with nobody reading
    await bus.publish(partial(0, stream="other"))
    await bus.close()
    got = await collect(sub)
    assert got[0] is first
    partials = [e for e in got if isinstance(e, CaptionPartial)]
    assert partials[-1].stream == "other"
    assert any(p.text == "p9" for p in partials)  # the newest of stream s survived
    assert len(got) == 3
    assert bus.dropped()["ui"] == 9


async def test_close_ends_iteration_after_draining() -> None:
    bus = EventBus()
    sub = bus.subscribe("x")
    await bus.publish(final(1))
    await bus.close()
    assert len(await collect(sub)) == 1


async def test_a_replacing_partial_never_overtakes_earlier_events() -> None:
    bus = EventBus()
    sub = bus.subscribe("slow", maxsize=3)
    await bus.publish(partial(1))
    await bus.publish(final(1))
    await bus.publish(CaptionPartial(stream="s", start=0.0, end=9.0, segment=2, text="seg2"))
    await bus.publish(CaptionPartial(stream="s", start=0.0, end=9.5, segment=2, text="seg2+"))
    await bus.close()
    got = await collect(sub)
    # The newest partial replaced the oldest one of its kind but joined at the tail.
    assert [e.text for e in got] == ["f1", "seg2", "seg2+"]  # type: ignore[attr-defined]
