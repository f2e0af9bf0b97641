"""Several satellites with --out: each site gets its own files, never one interleaved SRT."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from harken.app.config import HarkenConfig, OutputConfig
from harken.app.session import result_files
from harken.engine.bus import EventBus
from harken.engine.events import CaptionFinal, SpeechStarted
from harken.engine.sinks.per_stream import PerStreamSink, file_stem


def final(stream: str, start: float, text: str) -> CaptionFinal:
    return CaptionFinal(stream=stream, start=start, end=start + 1.0, segment=int(start),
                        text=text)


async def test_each_satellite_site_gets_its_own_files(tmp_path: Path) -> None:
    config = HarkenConfig(output=OutputConfig(dir=tmp_path, formats=["srt", "txt"]))
    (sink,) = result_files(config, stem="satellites", per_stream=True)
    assert isinstance(sink, PerStreamSink)
    bus = EventBus()
    sub = bus.subscribe(sink.name)
    # Two independent clocks: kitchen at 5 s and 9 s, hall at 1 s, interleaved in time.
    for event in (final("kitchen", 5.0, "lights on"), final("hall", 1.0, "door open"),
                  final("kitchen", 9.0, "lights off")):
        await bus.publish(event)
    await bus.close()
    await sink.consume(sub)
    kitchen = (tmp_path / "satellites-kitchen.srt").read_text(encoding="utf-8")
    hall = (tmp_path / "satellites-hall.srt").read_text(encoding="utf-8")
    assert "lights on" in kitchen
    assert "lights off" in kitchen
    assert "door" not in kitchen
    assert hall.startswith("1\n00:00:01,000 --> ")
    assert "door open" in hall
    assert "lights" not in hall
    assert (tmp_path / "satellites-hall.txt").read_text(encoding="utf-8").strip() == \
        "door open"
    assert sorted(sink.streams) == ["hall", "kitchen"]


async def test_streams_beyond_the_cap_are_counted_not_written(tmp_path: Path) -> None:
    made: list[str] = []

    def make(stream: str) -> list:  # type: ignore[type-arg]
        made.append(stream)
        return []

    sink = PerStreamSink(make=make, max_streams=2)
    bus = EventBus()
    sub = bus.subscribe(sink.name)
    for i in range(5):
        await bus.publish(final(f"s{i}", 0.0, "x"))
    await bus.close()
    await sink.consume(sub)
    assert made == ["s0", "s1"]
    assert sink.dropped_events == 3


async def test_a_stream_that_never_says_anything_gets_no_files(tmp_path: Path) -> None:
    config = HarkenConfig(output=OutputConfig(dir=tmp_path, formats=["jsonl", "txt"]))
    (sink,) = result_files(config, stem="satellites", per_stream=True)
    bus = EventBus()
    consuming = asyncio.create_task(sink.consume(bus.subscribe(sink.name)))
    for i in range(300):  # noise under made-up names: speech starts, nothing is said
        await bus.publish(SpeechStarted(stream=f"fake{i}", start=0.0, end=0.0, segment=0))
        await bus.publish(final(f"fake{i}", 0.0, " "))
    await bus.publish(SpeechStarted(stream="kitchen", start=4.0, end=4.0, segment=4))
    await bus.publish(final("kitchen", 4.0, "lights on"))
    await bus.close()
    await consuming
    assert sorted(os.listdir(tmp_path)) == [
        "satellites-kitchen.jsonl", "satellites-kitchen.txt"]
    lines = (tmp_path / "satellites-kitchen.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["speech_started", "caption_final"]
    assert sink.streams == ["kitchen"]
    assert sink.dropped_events > 0  # the oldest held fake streams were let go


@pytest.mark.parametrize(("stream", "stem"), [("kitchen", "kitchen"), ("..", "stream"),
                                              ("a b/c", "a_b_c"), ("x\x00y", "x_y")])
def test_file_stem_is_safe(stream: str, stem: str) -> None:
    assert file_stem(stream) == stem
