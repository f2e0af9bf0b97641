"""Export from the terminal app: the session so far as SRT, VTT, JSONL, TXT (+ RTTM).

The app records every non-replaceable event (finals, speech boundaries, speaker turns,
keywords, translations, errors) in a bounded SessionRecord; `export_session` replays that
record through the same file sinks a run with `--out` uses, so an export and a live file are
written by one code path.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from harken.app.config import HarkenConfig
from harken.app.session import output_sinks
from harken.app.tasks.refine import refined_sinks
from harken.engine.events import CaptionRefined, Event, SpeakerTurn
from harken.engine.sinks.base import Sink
from harken.engine.sinks.files import FILE_FORMATS
from harken.engine.sinks.rttm import RttmSink

# About 20 hours of continuous speech at ~3 events per segment: far beyond a session.
MAX_RECORD_EVENTS = 200_000


class SessionRecord:
    """What an export writes: non-replaceable events, oldest dropped past `max_events`."""

    def __init__(self, *, max_events: int = MAX_RECORD_EVENTS) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        self._events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self.lost = 0  # events that fell off the front

    def add(self, event: Event) -> None:
        if event.replaceable:
            return
        if len(self._events) == self._events.maxlen:
            self.lost += 1
        self._events.append(event)

    @property
    def events(self) -> list[Event]:
        return list(self._events)

    def __len__(self) -> int:
        return len(self._events)


async def _replay(events: Sequence[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


async def export_session(events: Sequence[Event], *, config: HarkenConfig, folder: Path,
                         stem: str) -> list[Path]:
    """Writes `stem`.srt/.vtt/.jsonl/.txt (translated subtitles when translating, .rttm
    when there are speaker turns) into `folder`; returns the paths written."""
    formats = [f for f in FILE_FORMATS if f != "rttm"]
    sinks: list[Sink] = output_sinks(config, stem=stem, formats=formats, out_dir=folder)
    if any(isinstance(e, SpeakerTurn) for e in events):
        sinks.append(RttmSink(path=folder / f"{stem}.rttm", uri=stem))
    written: list[Path] = []
    # The record holds every refinement: subtitles and transcript carry the refined text.
    writers = refined_sinks(sinks, enabled=any(isinstance(e, CaptionRefined) for e in events),
                            max_wait_s=None)
    for sink, writer in zip(sinks, writers, strict=True):
        await writer.consume(_replay(events))
        path = getattr(sink, "path", None)
        if isinstance(path, Path):
            written.append(path)
    return written
