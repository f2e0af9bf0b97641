"""Streams and sinks cannot stall each other (issue 10): live, a stalled stream drops only its
own blocks and a stalled sink loses only its own events; files stay lossless."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import threading
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import numpy as np
import pytest
from test_pipeline import BLOCK, ListSource, SegmentEcho, sample

from harken.engine.audio import AudioBlock
from harken.engine.bus import EventBus
from harken.engine.events import CaptionFinal, CaptionPartial, Event, Stats
from harken.engine.pipeline import BLOCK_QUEUE_SIZE, Engine, EngineOptions
from harken.engine.sinks.files import JsonlSink
from harken.engine.sinks.printer import PrinterSink
from harken.engine.stages.base import StageContext
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE

RELEASE_TIMEOUT_S = 20.0  # a blocked write gives up after this, so a broken test fails, not hangs


def final(i: int) -> CaptionFinal:
    return CaptionFinal(stream="s", start=float(i), end=i + 1.0, segment=i, text=f"f{i}")


def partial(i: int) -> CaptionPartial:
    return CaptionPartial(stream="s", start=float(i), end=i + 0.5, segment=i, text=f"p{i}")


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            self.events.append(event)


class Stuck:
    """A sink that never reads a single event."""

    name = "stuck"

    async def consume(self, events: AsyncIterable[Event]) -> None:
        await asyncio.Event().wait()


class BlockingStream(io.StringIO):
    """A terminal nobody reads: every write blocks its thread until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        if not self.release.wait(RELEASE_TIMEOUT_S):
            raise TimeoutError("the test never released the stream")
        return super().write(text)

    def isatty(self) -> bool:
        return False


async def test_live_bus_never_waits_and_counts_what_a_stopped_consumer_loses() -> None:
    bus = EventBus(lossless=False)
    stopped = bus.subscribe("stopped", maxsize=4)
    reader = bus.subscribe("reader", maxsize=4)
    got: list[Event] = []

    async def read() -> None:
        async for event in reader:
            got.append(event)

    task = asyncio.create_task(read())
    events: list[Event] = [e for i in range(20) for e in (partial(i), final(i))]
    for event in events:
        await asyncio.wait_for(bus.publish(event), timeout=1)  # never waits on `stopped`
        await asyncio.sleep(0)
    await bus.close()
    await task
    assert [e for e in got if isinstance(e, CaptionFinal)] == [e for e in events
                                                              if isinstance(e, CaptionFinal)]
    # The stopped consumer holds 4 events; its partials made room for finals first.
    assert len(stopped) == 4
    queued = [e async for e in stopped]
    assert all(isinstance(e, CaptionFinal) for e in queued)
    assert [e.segment for e in queued] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert bus.lost() == {"stopped": 16, "reader": 0}
    assert bus.dropped()["stopped"] == 20  # every partial coalesced away or displaced


async def test_lossless_bus_waits_for_a_slow_consumer() -> None:
    bus = EventBus(lossless=True)
    sub = bus.subscribe("slow", maxsize=2)
    for i in range(2):
        await bus.publish(final(i))
    blocked = asyncio.create_task(bus.publish(final(2)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert len(sub) == 2
    first = await anext(aiter(sub))
    await asyncio.wait_for(blocked, timeout=1)
    await bus.close()
    rest = [e async for e in sub]
    assert [e.text for e in (first, *rest)] == ["f0", "f1", "f2"]  # type: ignore[attr-defined]
    assert bus.lost() == {"slow": 0}


class StallOn(SegmentEcho):
    """Echo stage whose stream `stall` stops processing until `gate` is set."""

    gate: asyncio.Event
    stall = "a"

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self._stalls = ctx.stream == self.stall

    async def step(self) -> list[Event]:
        if self._stalls:
            await self.gate.wait()
        return []


async def run_live(source: Any, stages: list[Any], sinks: list[Any]) -> Engine:
    """Runs the engine live to the end of `source`; waits for every sink but a Stuck one."""
    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[source], stages=stages, worker=worker,
                        options=EngineOptions(live=True, levels=False, stats_interval_s=1.0))
        subs = [(sink, engine.subscribe(sink.name)) for sink in sinks]
        async with asyncio.TaskGroup() as tg:
            tasks = [(sink, tg.create_task(sink.consume(sub))) for sink, sub in subs]
            await engine.run()
            for sink, task in tasks:
                if isinstance(sink, Stuck):
                    task.cancel()
    return engine


class GatedSource(ListSource):
    """Opens StallOn's gate after `release_after` blocks of each stream."""

    def __init__(self, streams: dict[str, np.ndarray], *, release_after: int) -> None:
        super().__init__(streams)
        self.release_after = release_after

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        async for block in super().blocks():
            yield block
            if block.stream == "b" and block.start // BLOCK + 1 == self.release_after:
                StallOn.gate.set()


async def test_a_stalled_stream_drops_its_own_blocks_and_the_others_go_on() -> None:
    audio = np.tile(sample(), 3)  # 21 s: more blocks than one stream's queue holds
    release_after = 200  # blocks (of 210): a stalls from its first block until then
    StallOn.gate = asyncio.Event()
    collect = Collect()
    await asyncio.wait_for(run_live(GatedSource({"a": audio, "b": audio},
                                                release_after=release_after),
                                    [StallOn], [collect]), timeout=30)
    stats = {s: [e for e in collect.events if isinstance(e, Stats) and e.stream == s][-1]
             for s in ("a", "b")}
    assert stats["b"].counters["stream_dropped_blocks"] == 0
    assert stats["b"].counters["audio_samples"] == len(audio)
    # a's steps and its first close run beside its VAD, so it stalls at its second segment
    # end (which waits for the first close, which waits for the steps): it kept what it read
    # until then and what its queue held, dropped the rest...
    dropped = stats["a"].counters["stream_dropped_blocks"]
    assert 0 < dropped <= release_after - 1 - BLOCK_QUEUE_SIZE
    assert stats["a"].counters["audio_samples"] == len(audio) - dropped * BLOCK
    # ...and went on after the gap on its true clock: its last block ends where the audio does.
    assert stats["a"].end == pytest.approx(len(audio) / SAMPLE_RATE)
    finals = {s: [e for e in collect.events if isinstance(e, CaptionFinal) and e.stream == s]
              for s in ("a", "b")}
    assert len(finals["b"]) == 6  # two sentences per copy of the sample
    assert finals["a"][-1].end == pytest.approx(finals["b"][-1].end, abs=0.05)


async def test_a_file_run_loses_no_block_when_a_stream_is_slow() -> None:
    class Slow(SegmentEcho):
        async def step(self) -> list[Event]:
            await asyncio.sleep(0.002)
            return []

    audio = np.tile(sample(), 2)
    collect = Collect()
    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[ListSource({"a": audio})], stages=[Slow], worker=worker,
                        options=EngineOptions(live=False, levels=False))
        sub = engine.subscribe(collect.name)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(collect.consume(sub))
            await engine.run()
    last = [e for e in collect.events if isinstance(e, Stats)][-1]
    assert last.counters["stream_dropped_blocks"] == 0
    assert last.counters["audio_samples"] == len(audio)


async def test_a_sink_that_never_reads_holds_back_no_other_sink() -> None:
    collect = Collect()
    engine = await asyncio.wait_for(
        run_live(ListSource({"s": np.tile(sample(), 2)}), [SegmentEcho], [Stuck(), collect]),
        timeout=30)
    finals = [e for e in collect.events if isinstance(e, CaptionFinal)]
    assert len(finals) == 4
    assert engine.bus.lost()["collect"] == 0


async def test_a_blocked_stdout_does_not_block_the_loop_or_other_sinks() -> None:
    """`harken run --jsonl | reader-that-stopped`: the JSONL sink's writes block on its own
    thread; the event loop, the engine and every other sink go on."""
    stream = BlockingStream()
    jsonl = JsonlSink(stream=stream)
    printer_out = io.StringIO()
    printer = PrinterSink(stream=printer_out, tty=False)
    collect = Collect()
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[ListSource({"s": np.tile(sample(), 3)})], stages=[SegmentEcho],
                        worker=worker, options=EngineOptions(live=True, levels=False))
        subs = [(sink, engine.subscribe(sink.name, maxsize=8))
                for sink in (jsonl, printer, collect)]
        async with asyncio.TaskGroup() as tg:
            beat = tg.create_task(heartbeat())
            sinks = [tg.create_task(sink.consume(sub)) for sink, sub in subs]
            await asyncio.wait_for(engine.run(), timeout=30)
            # The engine is done and the others have everything while stdout is still stuck.
            await asyncio.wait_for(asyncio.gather(sinks[1], sinks[2]), timeout=10)
            assert stream.entered.is_set()
            assert not sinks[0].done()
            before = ticks
            await asyncio.sleep(0.2)
            assert ticks - before >= 5  # the loop runs on while the write is stuck
            stream.release.set()
            await asyncio.wait_for(sinks[0], timeout=10)
            beat.cancel()
    finals = [e for e in collect.events if isinstance(e, CaptionFinal)]
    assert len(finals) == 6
    assert printer_out.getvalue().count("\n") == 6
    assert engine.bus.lost()["collect"] == engine.bus.lost()["printer"] == 0
    # The JSONL reader lost what did not fit its queue and the writer's, all counted.
    written = [json.loads(line) for line in stream.getvalue().splitlines()]
    lost = engine.bus.lost()["jsonl"]
    non_replaceable = [e for e in collect.events if not e.replaceable]
    assert len([w for w in written if w["type"] not in ("stats", "caption_partial")]) \
        == len(non_replaceable) - lost


async def test_printer_on_a_tty_redraws_partials_and_ends_clean() -> None:
    out = io.StringIO()
    printer = PrinterSink(stream=out, tty=True)
    bus = EventBus(lossless=True)
    task = asyncio.create_task(printer.consume(bus.subscribe(printer.name)))
    for event in (partial(0), final(0), partial(1)):
        await bus.publish(event)
    await bus.close()
    await asyncio.wait_for(task, timeout=10)
    text = out.getvalue()
    assert text.startswith("\r\x1b[2K\x1b[2m[00:00.00 → 00:00.50] p0\x1b[0m")
    assert "\r\x1b[2K[00:00.00 → 00:01.00] f0\n" in text
    assert text.endswith("p1\x1b[0m\r\x1b[2K")  # the last partial is cleared at the end
    assert printer._out is out  # the stream is the printer's again after the run


class _FullDisk(io.StringIO):
    def write(self, text: str, /) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_failing_stdout_is_one_sink_error_and_a_closed_pipe_stays_quiet() -> None:
    from harken.engine.sinks.writer import ThreadedWriter
    from harken.models.errors import SinkError

    with pytest.raises(SinkError, match="cannot write the jsonl output: No space left"):
        async with ThreadedWriter(name="jsonl", open=_FullDisk, close_target=False) as w:
            await w.write("{}\n")

    class _Closed(io.StringIO):
        def write(self, text: str, /) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        async with ThreadedWriter(name="jsonl", open=_Closed, close_target=False) as w:
            await w.write("{}\n")
