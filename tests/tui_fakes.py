"""Scripted fakes for the terminal app's tests: events at given stream times, no model.

`ScriptedSession` publishes a script through a real EventBus to the app's sinks, so the TUI
sink reads a real bounded Subscription. A script item may also be a `Gate`: the session waits
there until the test opens it (to look at the screen mid-run).

KeywordEvent, SpeakerTurnEvent and TranslationEvent are schema look-alikes (by `type`) that
tests/test_mqtt_broker.py uses; the app's own scripts use the engine's event classes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from harken.app.config import HarkenConfig, OutputConfig
from harken.app.tui.app import HarkenApp, RunnableSession, build_app
from harken.engine.bus import EventBus
from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    Keyword,
    Level,
    SpeakerTurn,
    SpeechEnded,
    SpeechStarted,
    Stats,
    StreamError,
    Translation,
    Word,
)
from harken.engine.sinks.base import Sink
from harken.models.errors import HarkenError

WALL = "2024-05-01T12:00:00.000Z"  # fixed, so screens and exports are deterministic
STREAM = "demo"
DRAIN_S = 10.0  # s the sinks get to take the script before a scripted failure


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerTurnEvent(Event):
    type: ClassVar[str] = "speaker_turn"
    speaker: str
    score: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class KeywordEvent(Event):
    type: ClassVar[str] = "keyword"
    keyword: str
    score: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TranslationEvent(Event):
    type: ClassVar[str] = "translation"
    text: str
    lang: str
    segment: int


@dataclass
class Gate:
    """A point in the script where the session waits until the test calls `open()`."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self) -> None:
        self.opened.set()


class FakeEngine:
    def __init__(self) -> None:
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


class ScriptedSession:
    def __init__(self, script: Sequence[Event | Gate], sinks: list[Sink], *,
                 fail_with: BaseException | None = None) -> None:
        self.script = list(script)
        self.sinks = sinks
        self.fail_with = fail_with
        self.engine: FakeEngine | None = None
        self.published: list[Event] = []

    async def run(self) -> object:
        bus = EventBus()
        subs = [(sink, bus.subscribe(sink.name)) for sink in self.sinks]
        self.engine = FakeEngine()
        async with asyncio.TaskGroup() as tg:
            for sink, sub in subs:
                tg.create_task(sink.consume(sub), name=f"sink-{sink.name}")
            try:
                for item in self.script:
                    if isinstance(item, Gate):
                        item.reached.set()
                        await item.opened.wait()
                        continue
                    await bus.publish(item)
                    self.published.append(item)
                if self.fail_with is not None:
                    # Let the sinks take what was published first, then fail.
                    async with asyncio.timeout(DRAIN_S):
                        while any(len(sub) for _, sub in subs):  # noqa: ASYNC110
                            await asyncio.sleep(0.01)
                    raise self.fail_with
            finally:
                await bus.close()
        return self


def _words(text: str, start: float, end: float) -> tuple[Word, ...]:
    parts = text.split()
    step = (end - start) / max(1, len(parts))
    return tuple(Word(word=w, start=round(start + i * step, 2),
                      end=round(start + (i + 1) * step, 2)) for i, w in enumerate(parts))


def partial(segment: int, start: float, end: float, text: str) -> CaptionPartial:
    return CaptionPartial(stream=STREAM, start=start, end=end, wall_time=WALL, segment=segment,
                          text=text, words=_words(text, start, end), model="fake")


def final(segment: int, start: float, end: float, text: str,
          speaker: str | None = None) -> CaptionFinal:
    return CaptionFinal(stream=STREAM, start=start, end=end, wall_time=WALL, segment=segment,
                        text=text, words=_words(text, start, end), model="fake",
                        speaker=speaker)


def level(t: float, dbfs: float, speech: bool) -> Level:
    return Level(stream=STREAM, start=t, end=t + 0.1, wall_time=WALL, dbfs=dbfs, speech=speech)


def utterance(segment: int, start: float, end: float, text: str, speaker: str | None,
              *, partials: int = 2) -> list[Event]:
    """speech_started, growing partials, speech_ended, the final and its speaker turn."""
    words = text.split()
    out: list[Event] = [SpeechStarted(stream=STREAM, start=start, end=start, wall_time=WALL,
                                      segment=segment)]
    for i in range(1, partials + 1):
        upto = max(1, len(words) * i // (partials + 1))
        t = start + (end - start) * i / (partials + 1)
        out.append(level(t, -18.0, True))
        out.append(partial(segment, start, round(t, 2), " ".join(words[:upto])))
    out.append(SpeechEnded(stream=STREAM, start=start, end=end, wall_time=WALL,
                           segment=segment))
    out.append(final(segment, start, end, text, speaker))
    if speaker is not None:
        out.append(SpeakerTurn(stream=STREAM, start=start, end=end, wall_time=WALL,
                               speaker=speaker, score=0.9))
    return out


def demo_script() -> list[Event]:
    """Three speakers' worth of captions with a keyword, a translation and an open partial."""
    script: list[Event] = []
    script += utterance(0, 0.5, 3.0, "the quick brown fox jumps", "alice")
    script.append(Translation(stream=STREAM, start=0.5, end=3.0, wall_time=WALL,
                              text="el rápido zorro marrón salta", lang="es", segment=0))
    script += utterance(1, 3.6, 6.2, "over the lazy dog", "bob")
    script.append(Keyword(stream=STREAM, start=6.6, end=7.1, wall_time=WALL,
                          keyword="harken", score=0.91, segment=2))
    script += utterance(2, 6.6, 9.8, "harken turns speech into live captions", "alice")
    script += utterance(3, 10.4, 12.0, "can you hear me", "carol")
    script.append(Keyword(stream=STREAM, start=12.5, end=13.0, wall_time=WALL,
                          keyword="stop", score=0.78, segment=4))
    script.append(SpeechStarted(stream=STREAM, start=12.5, end=12.5, wall_time=WALL,
                                segment=4))
    script.append(partial(4, 12.5, 13.5, "and this is still"))
    script.append(level(13.5, -24.0, True))
    script.append(Stats(stream=STREAM, start=0.0, end=13.6, wall_time=WALL, rtf=0.12,
                        caption_latency_p50_s=0.31, caption_latency_p95_s=0.48,
                        dropped={"tui": 0, "srt": 0}, counters={"segments": 5}))
    return script


def fake_config(out_dir: Path) -> HarkenConfig:
    return HarkenConfig(output=OutputConfig(dir=out_dir))


def scripted_app(script: Sequence[Event | Gate], *, out_dir: Path,
                 file_sinks: Sequence[Sink] = (),
                 fail_with: HarkenError | None = None) -> tuple[HarkenApp, list[ScriptedSession]]:
    """The app as the CLI builds it, with the engine replaced by a script."""
    made: list[ScriptedSession] = []

    def session(tui: Sink) -> RunnableSession:
        s = ScriptedSession(script, [tui, *file_sinks], fail_with=fail_with)
        made.append(s)
        return s

    app = build_app(fake_config(out_dir), stem=STREAM, session=session,
                    device="file demo.wav (16000 Hz, 1 ch)", file_sinks=file_sinks)
    return app, made


def stream_error(message: str, *, fatal: bool = False) -> StreamError:
    return StreamError(stream=STREAM, start=1.0, end=1.0, wall_time=WALL, message=message,
                       fatal=fatal)
