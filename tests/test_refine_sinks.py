"""Sinks and refinements: files wait for the refined text (bounded live), the printer
replaces a final in place, MQTT publishes caption/refined, the TUI replaces the line."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from rich.cells import cell_len

from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    CaptionRefined,
    Event,
    Keyword,
    Word,
)
from harken.engine.mqtt.topics import SiteTopics, routes
from harken.engine.sinks.files import SrtSink, TxtSink
from harken.engine.sinks.printer import PrinterSink
from harken.engine.sinks.refined import RefinedFinals


def final(segment: int, text: str = "HELLO WORLD", *, speaker: str | None = None) -> CaptionFinal:
    return CaptionFinal(stream="s", start=float(segment), end=segment + 0.9, segment=segment,
                        text=text, speaker=speaker,
                        words=(Word(word=text.split()[0], start=segment, end=segment + 0.4),))


def refined(segment: int, text: str = "Hello, world.", *,
            accepted: bool = True) -> CaptionRefined:
    return CaptionRefined(stream="s", start=float(segment), end=segment + 0.9,
                          segment=segment, text=text, accepted=accepted,
                          reason="ok" if accepted else "disagrees",
                          words=(Word(word="Hello,", start=segment + 0.1, end=segment + 0.3),
                                 Word(word="world.", start=segment + 0.4, end=segment + 0.8)))


async def feed(items: Sequence[Event | float]) -> AsyncIterator[Event]:
    """Events, with pauses (a float: seconds) between them."""
    for item in items:
        if isinstance(item, float):
            await asyncio.sleep(item)
        else:
            yield item


class Collect:
    name = "txt"

    def __init__(self) -> None:
        self.got: list[tuple[float, Event]] = []

    async def consume(self, events: AsyncIterator[Event]) -> None:
        async for event in events:
            self.got.append((time.monotonic(), event))


async def test_a_final_waits_for_its_refinement_and_keeps_order() -> None:
    inner = Collect()
    wrapper = RefinedFinals(inner, max_wait_s=5.0)
    keyword = Keyword(stream="s", start=0.5, end=0.6, keyword="stop", score=0.9, segment=0)
    await wrapper.consume(feed([final(0, speaker="S1"), keyword, 0.05, refined(0)]))
    events = [e for _, e in inner.got]
    assert [type(e).__name__ for e in events] == ["CaptionFinal", "Keyword", "CaptionRefined"]
    first = events[0]
    assert isinstance(first, CaptionFinal)
    assert (first.text, first.speaker) == ("Hello, world.", "S1")
    assert [w.word for w in first.words] == ["Hello,", "world."]
    assert (wrapper.refined, wrapper.fallbacks) == (1, 0)


async def test_live_waits_are_bounded_then_the_ctc_text_stands() -> None:
    inner = Collect()
    wrapper = RefinedFinals(inner, max_wait_s=0.1)
    started = time.monotonic()
    await wrapper.consume(feed([final(0), 0.5, refined(0), final(1), refined(1)]))
    (t0, first), (_, late), (_, second), _ = inner.got
    assert isinstance(first, CaptionFinal)
    assert first.text == "HELLO WORLD"
    assert 0.09 <= t0 - started < 0.4  # given up after max_wait_s, not at the late refinement
    assert isinstance(late, CaptionRefined)
    assert isinstance(second, CaptionFinal)
    assert second.text == "Hello, world."
    assert (wrapper.refined, wrapper.fallbacks) == (1, 1)


async def test_files_wait_for_every_refinement_and_rejections_keep_the_ctc_text() -> None:
    inner = Collect()
    wrapper = RefinedFinals(inner, max_wait_s=None)
    await wrapper.consume(feed([final(0), final(1), 0.2, refined(0, "HELLO WORLD",
                                                                 accepted=False),
                                refined(1), final(2)]))
    finals = [e for _, e in inner.got if isinstance(e, CaptionFinal)]
    assert [f.text for f in finals] == ["HELLO WORLD", "Hello, world.", "HELLO WORLD"]
    assert wrapper.fallbacks == 1  # final 2: the stream ended before its refinement


async def test_subtitle_and_transcript_files_get_the_refined_text(tmp_path: Path) -> None:
    events = [final(0), refined(0), final(1), refined(1, "Second one.")]
    await RefinedFinals(SrtSink(path=tmp_path / "a.srt"), max_wait_s=None).consume(feed(events))
    await RefinedFinals(TxtSink(path=tmp_path / "a.txt"), max_wait_s=None).consume(feed(events))
    assert (tmp_path / "a.txt").read_text() == "Hello, world.\nSecond one.\n"
    srt = (tmp_path / "a.srt").read_text()
    assert "Hello, world." in srt
    assert "HELLO" not in srt
    assert "00:00:00,100 --> 00:00:00,800" in srt  # the aligned word times


async def test_printer_replaces_the_last_final_in_place() -> None:
    out = io.StringIO()
    await PrinterSink(stream=out, tty=True).consume(feed([final(0), refined(0)]))
    text = out.getvalue()
    assert "HELLO WORLD\n" in text
    assert text.index("\x1b[1F\x1b[0J") > text.index("HELLO WORLD")  # up one row, cleared
    assert text.rstrip().endswith("Hello, world.")
    pipe = io.StringIO()
    await PrinterSink(stream=pipe, tty=False).consume(
        feed([final(0), final(1), refined(0), refined(1, "No.", accepted=False)]))
    lines = pipe.getvalue().splitlines()
    assert lines[-1].endswith("refined: Hello, world.")
    assert len(lines) == 3  # a rejected refinement prints nothing


async def test_printer_counts_screen_cells_for_wide_characters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    monkeypatch.setattr("shutil.get_terminal_size", lambda *_: os.terminal_size((40, 24)))
    out = io.StringIO()
    wide = dataclasses.replace(final(0, "台所" * 12), stream="s")  # 48 cells, 24 characters
    partial = CaptionPartial(stream="s", start=0.0, end=0.5, segment=0, text="台所" * 30)
    await PrinterSink(stream=out, tty=True).consume(feed([partial, wide, refined(0)]))
    text = out.getvalue()
    # The final took two 40-cell rows (label + 48 cells): the rewrite goes up two, not one.
    assert "\x1b[2F\x1b[0J" in text
    # The partial is cut to the row (39 cells), wide characters counted twice.
    shown = text.split("\x1b[2m", 1)[1].split("\x1b[0m", 1)[0]
    assert shown.startswith("…")
    assert cell_len(shown) <= 39


async def test_printer_names_the_streams_once_a_second_one_speaks() -> None:
    import dataclasses

    out = io.StringIO()
    kitchen = dataclasses.replace(final(1, "FROM THE KITCHEN"), stream="kitchen")
    await PrinterSink(stream=out, tty=False).consume(feed([final(0), kitchen, final(2)]))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[")  # one stream so far: no name
    assert lines[1].startswith("kitchen [")
    assert lines[2].startswith("s [")


def test_with_satellites_the_first_caption_names_its_site(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`harken run --input mqtt://...`: the first site's first final names the site; without
    that it would be bare until a second site spoke."""
    import dataclasses
    from types import SimpleNamespace

    from harken.app.cli import main
    from harken.app.commands import run

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    for name in [n for n in os.environ if n.startswith("HARKEN_")]:
        monkeypatch.delenv(name)
    built: list[Sequence[object]] = []

    class NoSession:  # the sinks run() builds, and no engine, broker or models
        def __init__(self, *, sinks: Sequence[object], **_: object) -> None:
            built.append(sinks)

        async def run_stoppable(self) -> object:
            return SimpleNamespace()

    monkeypatch.setattr(run, "Session", NoSession)
    assert main(["run", "--input", "mqtt://127.0.0.1:1/hermes/audioServer/+/audioFrame",
                 "--no-tui"]) == 0
    (printer,) = [sink for sink in built[0] if isinstance(sink, PrinterSink)]
    out = io.StringIO()
    printer._out = out  # its own stream, as PrinterSink(stream=...) would have it
    kitchen = dataclasses.replace(final(0), stream="kitchen")
    asyncio.run(printer.consume(feed([kitchen, dataclasses.replace(final(1), stream="den")])))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("kitchen [")
    assert lines[1].startswith("den [")
    # The terminal app (on a terminal) is told the same.
    shown: list[object] = []
    monkeypatch.setattr(run, "use_tui", lambda args: True)
    monkeypatch.setattr(run, "run_tui", lambda *a, **kw: shown.append(kw["show_streams"]) or 0)
    assert main(["run", "--input", "mqtt://127.0.0.1:1/hermes/audioServer/+/audioFrame"]) == 0
    assert shown == [True]

def test_mqtt_route_of_refinements() -> None:
    topics = SiteTopics(prefix="harken", site="den")
    data = refined(0).to_dict()
    assert data["type"] == "caption_refined"
    assert [r.topic for r in routes(topics, data, levels=False)] == [
        "harken/den/caption/refined"]


async def test_tui_replaces_the_caption_line_and_exports_the_refined_text(
        tmp_path: Path) -> None:
    from test_tui_app import SIZE, texts, until
    from tui_fakes import STREAM, scripted_app
    from tui_fakes import final as tui_final

    first = tui_final(0, 0.5, 2.0, "HELLO WORLD", speaker="S1")
    second = tui_final(1, 3.0, 4.0, "STAYS AS IT IS")
    better = CaptionRefined(stream=STREAM, start=0.5, end=2.0, segment=0,
                            text="Hello, world.", words=(), model="fake")
    rejected = CaptionRefined(stream=STREAM, start=3.0, end=4.0, segment=1,
                              text="STAYS AS IT IS", accepted=False, reason="disagrees")
    app, _ = scripted_app([first, second, better, rejected], out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        assert texts(app) == ["Hello, world.", "STAYS AS IT IS"]
        await pilot.press("e")
        await until(pilot, lambda: bool(app.last_export), "the export")
    txt = next(p for p in app.last_export if p.suffix == ".txt")
    assert txt.read_text().splitlines() == ["S1: Hello, world.", "STAYS AS IT IS"]


def test_event_times_are_written_to_the_millisecond() -> None:
    event = CaptionFinal(stream="s", start=7.609999999999999, end=8.260000000000002,
                         segment=0, text="HI",
                         words=(Word(word="HI", start=7.609999999999999, end=7.8000001),))
    data = event.to_dict()
    assert (data["start"], data["end"]) == (7.61, 8.26)
    assert data["words"] == [{"word": "HI", "start": 7.61, "end": 7.8}]
    assert event.start == 7.609999999999999  # the event itself keeps full precision
