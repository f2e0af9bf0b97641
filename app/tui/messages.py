"""Textual messages that carry engine events into the terminal app.

The TUI sink (sink.py) turns each engine event into one of these and posts it to the app.
High-rate kinds (partials, levels, stats) coalesce: when several of the same kind and stream
wait in the app's queue, Textual hands only the newest to the handlers (`can_replace`).

These are mutable dataclasses because Textual sets bookkeeping attributes on every message
after construction; treat them as read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    CaptionRefined,
    Event,
    Keyword,
    Level,
    SpeakerTurn,
    SpeechEnded,
    SpeechStarted,
    Stats,
    StreamError,
    Translation,
)


@dataclass
class EngineMessage(Message):
    """Base: one engine event. `event` is what the export writes."""

    event: Event

    def _same_kind(self, other: Message) -> bool:
        return (type(other) is type(self) and isinstance(other, EngineMessage)
                and other.event.stream == self.event.stream)


@dataclass
class PartialCaption(EngineMessage):
    event: CaptionPartial

    def can_replace(self, message: Message) -> bool:
        return self._same_kind(message)


@dataclass
class FinalCaption(EngineMessage):
    event: CaptionFinal


@dataclass
class RefinedCaption(EngineMessage):
    """A caption's second pass: replaces the final's text in place when accepted."""

    event: CaptionRefined


@dataclass
class LevelUpdate(EngineMessage):
    event: Level

    def can_replace(self, message: Message) -> bool:
        return self._same_kind(message)


@dataclass
class StatsUpdate(EngineMessage):
    event: Stats

    def can_replace(self, message: Message) -> bool:
        return self._same_kind(message)


@dataclass
class SpeechBoundary(EngineMessage):
    event: SpeechStarted | SpeechEnded


@dataclass
class TurnClosed(EngineMessage):
    """A diarization speaker turn."""

    event: SpeakerTurn


@dataclass
class KeywordHit(EngineMessage):
    event: Keyword


@dataclass
class TranslationArrived(EngineMessage):
    event: Translation


@dataclass
class EngineProblem(EngineMessage):
    """A StreamError: shown as a notification."""

    event: StreamError


@dataclass
class SessionEnded(Message):
    """The engine stopped: the input ended (`error` None) or it failed."""

    error: str | None


#: event type -> the message that carries it; events without one have no view in the app
MESSAGE_FOR: dict[type[Event], type[EngineMessage]] = {
    CaptionPartial: PartialCaption,
    CaptionFinal: FinalCaption,
    CaptionRefined: RefinedCaption,
    Level: LevelUpdate,
    Stats: StatsUpdate,
    SpeechStarted: SpeechBoundary,
    SpeechEnded: SpeechBoundary,
    SpeakerTurn: TurnClosed,
    Keyword: KeywordHit,
    Translation: TranslationArrived,
    StreamError: EngineProblem,
}


def to_message(event: Event) -> EngineMessage | None:
    """The message for one event, or None when the UI has no view of it."""
    kind = MESSAGE_FOR.get(type(event))
    return kind(event=event) if kind is not None else None
