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
from harken.app.factory import output_sinks
from harken.engine.errors import SinkError
from harken.engine.events import CaptionFinal, Event
from harken.engine.sinks import FILE_FORMATS

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


def _speaker_spans(events: Sequence[Event]) -> list[tuple[str, float, float]]:
    """Speaker turns when diarization ran, else the finals that carry a speaker."""
    turns = []
    for e in events:
        speaker = getattr(e, "speaker", None)
        if e.type == "speaker_turn" and isinstance(speaker, str) and speaker:
            turns.append((speaker, e.start, e.end))
    if turns:
        return turns
    return [(e.speaker, e.start, e.end) for e in events
            if isinstance(e, CaptionFinal) and e.speaker]


def rttm_text(events: Sequence[Event], *, file_id: str) -> str:
    """NIST RTTM: one SPEAKER line per turn ('' when no speaker is known)."""
    lines = []
    for speaker, start, end in sorted(_speaker_spans(events), key=lambda s: s[1]):
        name = "_".join(speaker.split())
        lines.append(f"SPEAKER {file_id} 1 {start:.3f} {max(0.0, end - start):.3f} "
                     f"<NA> <NA> {name} <NA> <NA>\n")
    return "".join(lines)


async def _replay(events: Sequence[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


async def export_session(events: Sequence[Event], *, config: HarkenConfig, folder: Path,
                         stem: str) -> list[Path]:
    """Writes `stem`.srt/.vtt/.jsonl/.txt (and .rttm when speakers are known) into `folder`."""
    for sink in output_sinks(config, stem=stem, formats=FILE_FORMATS, out_dir=folder):
        await sink.consume(_replay(events))
    written = [folder / f"{stem}.{fmt}" for fmt in FILE_FORMATS]
    rttm = rttm_text(events, file_id=stem)
    if rttm:
        path = folder / f"{stem}.rttm"
        try:
            path.write_text(rttm, encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"cannot write {path}: {exc.strerror or exc}. "
                            "Choose another folder with --out.") from exc
        written.append(path)
    return written
