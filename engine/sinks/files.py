"""File sinks: subtitles (SRT, WebVTT, one per translated language), JSON lines, plain text
and RTTM. Each writes through a ThreadedWriter (engine/sinks/writer.py), so a full disk or a
lost mount stalls only that sink, never the event loop; each writes and flushes every final
as it arrives and closes at the end, also on an error or Ctrl-C, so nothing produced is lost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable
from pathlib import Path
from typing import IO

from harken.engine.events import (
    CaptionFinal,
    Event,
    Level,
    Translation,
)
from harken.engine.sinks.base import Sink
from harken.engine.sinks.rttm import RttmSink
from harken.engine.sinks.subtitles import (
    MAX_CUE_CHARS,
    VTT_HEADER,
    Cue,
    cues_from_final,
    srt_block,
    vtt_block,
)
from harken.engine.sinks.textfile import TextFile
from harken.engine.sinks.writer import ThreadedWriter

FILE_FORMATS = ("srt", "vtt", "jsonl", "txt", "rttm")


def _file(path: Path, name: str) -> ThreadedWriter:
    return ThreadedWriter(name=name, open=lambda: TextFile(path))


class JsonlSink:
    """One JSON object per line (the schema in the README). Levels are left out by default."""

    def __init__(self, *, path: Path | None = None, stream: IO[str] | None = None,
                 include_levels: bool = False, name: str = "jsonl") -> None:
        if (path is None) == (stream is None):
            raise ValueError("JsonlSink needs exactly one of path or stream")
        self.name = name
        self.path = path
        self._stream = stream
        self._include_levels = include_levels

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async with self._writer() as out:
            async for event in events:
                if isinstance(event, Level) and not self._include_levels:
                    continue
                await out.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")

    def _writer(self) -> ThreadedWriter:
        if self.path is not None:
            return _file(self.path, self.name)
        stream = self._stream
        if stream is None:  # unreachable: checked in __init__; keeps mypy precise
            raise ValueError("JsonlSink has no output")
        return ThreadedWriter(name=self.name, open=lambda: stream, close_target=False)


def _srt(index: int, cues: Iterable[Cue]) -> tuple[int, str]:
    """SRT blocks numbered on from `index` (a cue with nothing to show gets no number)."""
    blocks: list[str] = []
    for cue in cues:
        if block := srt_block(index + 1, cue):
            index += 1
            blocks.append(block)
    return index, "".join(blocks)


class SrtSink:
    def __init__(self, *, path: Path, name: str = "srt") -> None:
        self.name = name
        self.path = path

    async def consume(self, events: AsyncIterable[Event]) -> None:
        index = 0
        async with _file(self.path, self.name) as out:
            async for event in events:
                if isinstance(event, CaptionFinal):
                    index, text = _srt(index, cues_from_final(event))
                    await out.write(text)


class VttSink:
    def __init__(self, *, path: Path, name: str = "vtt") -> None:
        self.name = name
        self.path = path

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async with _file(self.path, self.name) as out:
            await out.write(VTT_HEADER)
            async for event in events:
                if isinstance(event, CaptionFinal):
                    await out.write("".join(map(vtt_block, cues_from_final(event))))


class TxtSink:
    """Plain transcript: one final per line, prefixed with the speaker when known."""

    def __init__(self, *, path: Path, name: str = "txt") -> None:
        self.name = name
        self.path = path

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async with _file(self.path, self.name) as out:
            async for event in events:
                if isinstance(event, CaptionFinal) and event.text.strip():
                    prefix = f"{event.speaker}: " if event.speaker else ""
                    await out.write(f"{prefix}{event.text.strip()}\n")


def translation_cues(event: Translation) -> list[Cue]:
    """A translation has no word times: long text is cut at spaces into readable cues whose
    times split the segment in proportion to their length."""
    chunks: list[str] = []
    for word in event.text.split():
        if chunks and len(chunks[-1]) + 1 + len(word) <= MAX_CUE_CHARS:
            chunks[-1] += " " + word
        else:
            chunks.append(word)
    total = sum(len(c) for c in chunks)
    cues: list[Cue] = []
    at = event.start
    for chunk in chunks:
        end = at + (event.end - event.start) * len(chunk) / total
        cues.append(Cue(at, end, chunk))
        at = end
    return cues


class TranslatedSubtitleSink:
    """SRT or WebVTT of the translations into one language (e.g. talk.de.srt)."""

    def __init__(self, *, path: Path, lang: str, fmt: str, name: str | None = None) -> None:
        if fmt not in ("srt", "vtt"):
            raise ValueError(f"translated subtitles are srt or vtt, not {fmt!r}")
        self.name = name or f"{fmt}-{lang}"
        self.path = path
        self.lang = lang
        self.fmt = fmt

    async def consume(self, events: AsyncIterable[Event]) -> None:
        index = 0
        async with _file(self.path, self.name) as out:
            if self.fmt == "vtt":
                await out.write(VTT_HEADER)
            async for event in events:
                if isinstance(event, Translation) and event.lang == self.lang:
                    cues = translation_cues(event)
                    if self.fmt == "vtt":
                        await out.write("".join(map(vtt_block, cues)))
                        continue
                    index, text = _srt(index, cues)
                    await out.write(text)


def file_sink(fmt: str, path: Path) -> Sink:
    if fmt == "srt":
        return SrtSink(path=path)
    if fmt == "vtt":
        return VttSink(path=path)
    if fmt == "jsonl":
        return JsonlSink(path=path)
    if fmt == "txt":
        return TxtSink(path=path)
    if fmt == "rttm":
        return RttmSink(path=path)
    raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FILE_FORMATS)}")
