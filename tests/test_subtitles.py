"""Subtitle cues and file sinks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from harken.engine.bus import EventBus
from harken.engine.events import CaptionFinal, CaptionPartial, Word
from harken.engine.sinks.files import JsonlSink, SrtSink, TxtSink, VttSink
from harken.engine.sinks.subtitles import (
    MAX_CUE_CHARS,
    Cue,
    cues_from_final,
    srt_block,
    timestamp,
    vtt_block,
    wrap_lines,
)


def final_with_words(n: int, *, start: float = 1.0, speaker: str | None = None) -> CaptionFinal:
    words = tuple(Word(word=f"word{i}", start=start + i * 0.4, end=start + i * 0.4 + 0.3)
                  for i in range(n))
    return CaptionFinal(stream="s", start=start, end=words[-1].end + 0.2, segment=0,
                        text=" ".join(w.word for w in words), words=words, speaker=speaker)


def test_timestamp_formats() -> None:
    assert timestamp(3723.4567, sep=",") == "01:02:03,457"
    assert timestamp(0, sep=".") == "00:00:00.000"


def test_long_final_splits_into_bounded_cues_in_order() -> None:
    cues = cues_from_final(final_with_words(40))
    assert len(cues) > 1
    assert all(len(c.text) <= MAX_CUE_CHARS for c in cues)
    assert all(c.end - c.start <= 7.0 for c in cues)
    assert all(a.end <= b.start for a, b in itertools.pairwise(cues))
    assert " ".join(c.text for c in cues) == final_with_words(40).text


def test_speaker_prefix_and_wrap() -> None:
    cues = cues_from_final(final_with_words(3, speaker="S1"))
    assert cues[0].text.startswith("S1: ")
    assert all(len(line) <= 42 for line in wrap_lines("a " * 60).splitlines())


async def test_file_sinks_write_valid_files(tmp_path: Path) -> None:
    bus = EventBus()
    sinks = [SrtSink(path=tmp_path / "a.srt"), VttSink(path=tmp_path / "a.vtt"),
             TxtSink(path=tmp_path / "a.txt"), JsonlSink(path=tmp_path / "a.jsonl")]
    subs = [bus.subscribe(s.name) for s in sinks]
    import asyncio

    tasks = [asyncio.create_task(s.consume(sub)) for s, sub in zip(sinks, subs, strict=True)]
    await bus.publish(CaptionPartial(stream="s", start=1, end=1.5, segment=0, text="wor"))
    await bus.publish(final_with_words(3))
    await bus.publish(final_with_words(2, start=5.0))
    await bus.close()
    await asyncio.gather(*tasks)
    srt = (tmp_path / "a.srt").read_text()
    assert srt.startswith("1\n00:00:01,000 --> ")
    assert "\n2\n00:00:05,000 --> " in srt
    assert (tmp_path / "a.vtt").read_text().startswith("WEBVTT\n\n00:00:01.000 --> ")
    assert (tmp_path / "a.txt").read_text().splitlines() == ["word0 word1 word2", "word0 word1"]
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["type"] for x in lines] == ["caption_partial", "caption_final", "caption_final"]
    assert lines[1]["words"][0] == {"word": "word0", "start": 1.0, "end": 1.3}


async def test_file_is_closed_and_flushed_on_cancel(tmp_path: Path) -> None:
    import asyncio

    bus = EventBus()
    sink = SrtSink(path=tmp_path / "c.srt")
    sub = bus.subscribe("srt")
    task = asyncio.create_task(sink.consume(sub))
    await bus.publish(final_with_words(2))
    await asyncio.sleep(0.05)
    task.cancel()  # what Ctrl-C does to the sink tasks
    await asyncio.gather(task, return_exceptions=True)
    assert "word0 word1" in (tmp_path / "c.srt").read_text()


async def test_a_full_disk_is_a_clear_error_not_a_traceback() -> None:
    import asyncio
    import sys

    import pytest

    from harken.engine.sinks.textfile import TextFile
    from harken.models.errors import SinkError

    full = Path("/dev/full")  # every write fails with ENOSPC, like a full disk
    if sys.platform != "linux":
        pytest.skip("/dev/full is Linux-only")
    bus = EventBus()
    sub = bus.subscribe("srt")
    task = asyncio.create_task(SrtSink(path=full).consume(sub))
    await bus.publish(final_with_words(2))
    await bus.close()
    with pytest.raises(SinkError, match=r"/dev/full.*space"):
        await task
    with pytest.raises(SinkError, match="cannot create"):
        TextFile(Path("/proc/no-such-dir/x.srt"))


def test_vtt_cue_text_is_escaped() -> None:
    cue = Cue(0.0, 1.0, "Tom & Jerry <b>bold</b> a --> b")
    block = vtt_block(cue)
    text = block.split("\n", 1)[1]
    assert "Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt; a --&gt; b" in text.replace("\n", " ")
    assert "-->" not in text
    assert "<" not in text
    assert block.count("\n\n") == 1  # one cue, ended by one blank line


def test_srt_cue_text_cannot_break_the_file() -> None:
    # A speaker name or a model's text with a timing arrow, blank lines and control bytes.
    cue = Cue(0.0, 1.0, "S1\n\n2\n00:00:01,000 --> 00:00:02,000\x00 end\x1b[2J")
    block = srt_block(1, cue)
    lines = block.split("\n")
    assert lines[:2] == ["1", "00:00:00,000 --> 00:00:01,000"]
    assert "-->" not in "\n".join(lines[2:])
    assert "\x00" not in block
    assert "\x1b" not in block
    assert block.endswith("\n\n")
    assert "\n\n" not in block[:-2]
    # A cue with nothing to show is left out rather than written as an empty cue.
    assert srt_block(2, Cue(0.0, 1.0, " \x00 ")) == vtt_block(Cue(0.0, 1.0, "\x07")) == ""


async def test_srt_numbering_stays_dense_when_a_cue_is_empty(tmp_path: Path) -> None:
    import asyncio

    bus = EventBus()
    sink = SrtSink(path=tmp_path / "e.srt")
    task = asyncio.create_task(sink.consume(bus.subscribe("srt")))
    await bus.publish(final_with_words(2))
    await bus.publish(CaptionFinal(stream="s", start=3.0, end=4.0, segment=1, text="\x00"))
    await bus.publish(CaptionFinal(stream="s", start=5.0, end=6.0, segment=2, text="a --> b"))
    await bus.close()
    await task
    blocks = (tmp_path / "e.srt").read_text().split("\n\n")
    assert [b.split("\n")[0] for b in blocks if b] == ["1", "2"]
    assert blocks[1].split("\n")[2] == "a -> b"
