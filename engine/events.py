"""Typed events: the one language between the engine and every sink.

Every event carries the stream id and `start`/`end` in stream-clock seconds (seconds since the
stream's first sample). Wall time is added at the edge (`wall_time`, set when the event is
made). `to_dict()` gives the JSONL schema documented in the README (SCHEMA_VERSION).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

SCHEMA_VERSION = 1


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_TIMES = frozenset({"start", "end"})  # stream times in seconds, written to the millisecond


def _ms(seconds: float) -> float:
    """A stream time as written: whole milliseconds (7.609999999999999 -> 7.61)."""
    return round(seconds, 3)


@dataclass(frozen=True, slots=True, kw_only=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event. `type` is the JSONL discriminator."""

    type: ClassVar[str] = "event"
    #: Partials, levels and stats may be replaced by a newer one of the same stream when a
    #: consumer lags; everything else is delivered in order or its loss is counted.
    replaceable: ClassVar[bool] = False
    #: An annotation of a finished segment (it has a `segment`): the engine publishes it only
    #: after that segment's `caption_final` (the ordering contract in the README).
    follows_final: ClassVar[bool] = False

    stream: str
    start: float
    end: float
    wall_time: str = field(default_factory=_now_iso)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and value and isinstance(value[0], Word):
                value = [{**dataclasses.asdict(w), "start": _ms(w.start), "end": _ms(w.end)}
                         for w in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif f.name in _TIMES and isinstance(value, float):
                value = _ms(value)
            out[f.name] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStarted(Event):
    type: ClassVar[str] = "speech_started"
    segment: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechEnded(Event):
    type: ClassVar[str] = "speech_ended"
    segment: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptionPartial(Event):
    type: ClassVar[str] = "caption_partial"
    replaceable: ClassVar[bool] = True
    segment: int
    text: str
    words: tuple[Word, ...] = ()
    model: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptionFinal(Event):
    type: ClassVar[str] = "caption_final"
    segment: int
    text: str
    words: tuple[Word, ...] = ()
    model: str = ""
    speaker: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptionRefined(Event):
    """The second pass of one caption (docs/refine.md): same stream, segment, start and end
    as its `caption_final`, and always published after it.

    `text`/`words` are what stands: the refined text with word times from CTC alignment
    when `accepted`; otherwise the CTC final's, and `reason` says why (the guard's verdict:
    empty, ctc_empty, disagrees, repeats; or failed, skipped). `cer` is the refinement's
    character error rate against the CTC text, when both had words.
    """

    type: ClassVar[str] = "caption_refined"
    follows_final: ClassVar[bool] = True
    segment: int
    text: str
    words: tuple[Word, ...] = ()
    model: str = ""
    accepted: bool = True
    reason: str = "ok"
    cer: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Level(Event):
    """Input level of the last block, for meters (not written to files by default)."""

    type: ClassVar[str] = "level"
    replaceable: ClassVar[bool] = True
    dbfs: float
    speech: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats(Event):
    """Periodic health figures. `counters` are cumulative since the stream started."""

    type: ClassVar[str] = "stats"
    replaceable: ClassVar[bool] = True
    rtf: float | None = None
    lag_s: float = 0.0
    queue_depth: int = 0
    caption_latency_p50_s: float | None = None
    caption_latency_p95_s: float | None = None
    #: Caption finals after a pause, from the end of the segment's audio to the final's
    #: publication (with its speaker label); a VAD split's finals are not in it.
    final_latency_p50_s: float | None = None
    final_latency_p95_s: float | None = None
    #: Refined finals after the end of speech (None unless refining: docs/refine.md).
    refine_latency_p50_s: float | None = None
    refine_latency_p95_s: float | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamError(Event):
    """A non-fatal problem a user should see (device lost, model failure on one window)."""

    type: ClassVar[str] = "error"
    message: str
    fatal: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Keyword(Event):
    """A spotted keyword; `start`/`end` span the audio every window that fired shares."""

    type: ClassVar[str] = "keyword"
    keyword: str
    score: float
    segment: int  # the VAD segment it was heard in
    model: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Translation(Event):
    """The translation of one final segment (`segment` is its caption's segment id)."""

    type: ClassVar[str] = "translation"
    follows_final: ClassVar[bool] = True
    segment: int
    lang: str  # the requested code, e.g. "de"
    text: str
    model: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerTurn(Event):
    """A closed speaker turn: `speaker` is an enrolled name or S1, S2, ... (docs/speakers.md).

    `score` is the speaker's mean activity (0..1) over the turn's active frames; `enrolled`
    tells whether `speaker` is an enrolled person.
    """

    type: ClassVar[str] = "speaker_turn"
    speaker: str
    score: float
    enrolled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded(Event):
    """Its source ended the stream while the run went on (an idle satellite was evicted):
    the stream's last event, after every final and annotation of it. `start` and `end` are
    where its clock stopped. Not sent for streams that end with the run."""

    type: ClassVar[str] = "stream_ended"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (SpeechStarted, SpeechEnded, CaptionPartial, CaptionFinal, CaptionRefined, Level,
                Stats, StreamError, Keyword, Translation, SpeakerTurn, StreamEnded)
}
