"""RTTM (NIST Rich Transcription Time Marked) speaker turns: formatting and a file sink.

One line per turn, the form pyannote, dscore and md-eval read:
`SPEAKER <uri> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`. Fields are separated by
spaces, so spaces inside a file id or a speaker name become underscores.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable
from pathlib import Path

from harken.engine.events import Event, SpeakerTurn
from harken.engine.sinks.textfile import TextFile
from harken.engine.sinks.writer import ThreadedWriter

_SPACE = re.compile(r"\s+")


def rttm_token(text: str) -> str:
    """A file id or speaker name as one RTTM field (whitespace -> '_', empty -> 'unknown')."""
    token = _SPACE.sub("_", text.strip())
    return token or "unknown"


def rttm_line(*, uri: str, start: float, end: float, speaker: str) -> str:
    duration = max(0.0, end - start)
    return (f"SPEAKER {rttm_token(uri)} 1 {start:.3f} {duration:.3f} <NA> <NA> "
            f"{rttm_token(speaker)} <NA> <NA>\n")


class RttmSink:
    """Writes every speaker turn as it closes; `uri` defaults to each event's stream id."""

    def __init__(self, *, path: Path, uri: str | None = None, name: str = "rttm") -> None:
        self.name = name
        self.path = path
        self.uri = uri

    async def consume(self, events: AsyncIterable[Event]) -> None:
        path = self.path
        async with ThreadedWriter(name=self.name, open=lambda: TextFile(path)) as out:
            async for event in events:
                if isinstance(event, SpeakerTurn):
                    await out.write(rttm_line(uri=self.uri or event.stream, start=event.start,
                                              end=event.end, speaker=event.speaker))
