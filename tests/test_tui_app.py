"""The terminal app driven by Textual's Pilot with scripted events (no model)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile as sf
from rich.text import Text
from test_pipeline import QuietStage
from textual.app import App
from textual.pilot import Pilot
from tui_fakes import (
    STREAM,
    Gate,
    ScriptedSession,
    demo_script,
    fake_config,
    final,
    level,
    partial,
    scripted_app,
    stream_error,
)

from harken.app.config import CaptionsConfig, KeywordsConfig, SpeakersConfig
from harken.app.tui.app import (
    HarkenApp,
    RunnableSession,
    build_app,
    configured_models,
    outputs_label,
)
from harken.app.tui.colours import PALETTE
from harken.app.tui.help import HelpScreen
from harken.app.tui.messages import FinalCaption, LevelUpdate
from harken.app.tui.sink import TuiSink
from harken.engine.audio import AudioBlock
from harken.engine.bus import EventBus
from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    Keyword,
    SpeakerTurn,
    Translation,
)
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.sinks.base import Sink
from harken.engine.sinks.files import SrtSink
from harken.engine.stages.base import StageContext
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import HarkenError, first_user_error

SIZE = (100, 30)
SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.wav"
WAIT_S = 20.0  # no test may hang on a condition that never comes


async def until(pilot: Pilot[Any], condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await pilot.pause(0.01)
    await pilot.pause()


def finals_of(script: list[Event | Gate]) -> list[CaptionFinal]:
    return [e for e in script if isinstance(e, CaptionFinal)]


def texts(app: HarkenApp) -> list[str]:
    return [line.entry.text for line in app.captions.lines]


def style_colours(text: Text, word: str) -> set[str]:
    """Colours of the spans of `text` that cover `word`."""
    plain = text.plain
    at = plain.index(word)
    out = set()
    for span in text.spans:
        if span.start <= at < span.end:
            colour = str(span.style).split()[-1]
            out.add(colour)
    return out


async def test_partial_is_shown_then_replaced_by_its_final(tmp_path: Path) -> None:
    gate = Gate()
    script: list[Event | Gate] = [partial(0, 0.5, 1.0, "the quick"),
                                  partial(0, 0.5, 1.5, "the quick brown fox"), gate,
                                  final(0, 0.5, 2.0, "the quick brown fox jumps")]
    app, _ = scripted_app(script, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: gate.reached.is_set()
                    and app.captions.partial_texts.get(STREAM) == "the quick brown fox",
                    "the newest partial")
        assert texts(app) == []  # a partial is not a caption line
        partial_widget = app.captions.query(".partial").first()
        assert partial_widget.display
        gate.open()
        await until(pilot, lambda: app.session_done, "the script to end")
        assert texts(app) == ["the quick brown fox jumps"]
        assert app.captions.partial_texts[STREAM] == ""
        assert not partial_widget.display
        assert app.state == "finished"


@pytest.mark.parametrize("show_streams", [True, False])
async def test_with_satellites_the_first_caption_names_its_site(
        tmp_path: Path, show_streams: bool) -> None:
    """Satellites (show_streams): the first site's first line names it; otherwise a lone
    stream's lines stay bare until a second stream is heard."""

    kitchen = dataclasses.replace(final(0, 0.5, 2.0, "lights on please"), stream="kitchen")
    app = build_app(fake_config(tmp_path), stem="satellites", device="satellites",
                    session=lambda tui: ScriptedSession([kitchen], [tui]),
                    show_streams=show_streams)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        (line,) = app.captions.lines
        assert ("kitchen" in str(line.content)) is show_streams

async def test_speakers_keep_their_colour_and_get_timeline_rows(tmp_path: Path) -> None:
    script = demo_script()
    app, _ = scripted_app(script, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        speakers = list(dict.fromkeys(f.speaker for f in finals_of(list(script)) if f.speaker))
        assert app.timeline.speakers == speakers == ["alice", "bob", "carol"]
        for i, speaker in enumerate(speakers):  # colours in order of first appearance
            assert app.colours.colour(speaker) == PALETTE[i]
        # Every caption line of a speaker uses that speaker's colour (alice's two lines too).
        for line in app.captions.lines:
            who = line.entry.speaker
            assert who is not None
            content = line.content
            assert isinstance(content, Text)
            assert style_colours(content, who) == {app.colours.colour(who)}
        turns = [(e.start, e.end) for e in script
                 if isinstance(e, SpeakerTurn) and e.speaker == "alice"]
        assert app.timeline.spans("alice") == turns
        # The rendered row of each speaker has bars in its colour, and only there.
        rows = {line.plain.split()[0]: line
                for line in app.timeline.render().split("\n") if line.plain.strip()}
        for speaker in speakers:
            bar_colours = {str(s.style) for s in rows[speaker].spans
                           if "█" in rows[speaker].plain[s.start:s.end]}
            assert bar_colours == {app.colours.colour(speaker)}


async def test_clear_empties_the_logs(tmp_path: Path) -> None:
    app, _ = scripted_app(demo_script(), out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        assert len(app.captions.lines) == 4
        assert len(app.keywords.rows) == 2
        await pilot.press("c")
        await pilot.pause()
        assert app.captions.lines == []
        assert app.keywords.rows == []
        assert app.captions.query_one("#captions-placeholder").display
        assert len(app.record) > 0  # clearing the screen keeps what an export writes


async def test_export_writes_the_session_as_files(tmp_path: Path) -> None:
    script = demo_script()
    app, _ = scripted_app(script, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        await pilot.press("e")
        await until(pilot, lambda: bool(app.last_export), "the export")
    paths = {p.suffix: p for p in app.last_export}
    assert set(paths) == {".srt", ".vtt", ".jsonl", ".txt", ".rttm"}
    assert all(p.parent == tmp_path and p.stem.startswith(STREAM) for p in paths.values())
    finals = finals_of(list(script))
    assert paths[".txt"].read_text().splitlines() == [f"{f.speaker}: {f.text}" for f in finals]
    for fmt in (".srt", ".vtt"):  # cues wrap lines: compare the words
        words = " ".join(paths[fmt].read_text().split())
        assert all(f"{f.speaker}: {f.text}" in words for f in finals)
    records = [json.loads(line) for line in paths[".jsonl"].read_text().splitlines()]
    kept = [e for e in script if not e.replaceable]
    assert [r["type"] for r in records] == [e.type for e in kept]
    assert {"keyword", "translation", "speaker_turn"} <= {r["type"] for r in records}
    rttm = [line.split() for line in paths[".rttm"].read_text().splitlines()]
    turns = [e for e in script if isinstance(e, SpeakerTurn)]
    assert [(r[7], float(r[3]), float(r[4])) for r in rttm] == \
        [(t.speaker, t.start, round(t.end - t.start, 3)) for t in turns]


async def test_translations_under_captions_or_in_their_pane(tmp_path: Path) -> None:
    script = demo_script()
    app, _ = scripted_app(script, out_dir=tmp_path)
    translation = next(e for e in script if isinstance(e, Translation))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        line = app.captions.lines[translation.segment]
        assert line.entry.translations == ((translation.lang, translation.text),)
        assert translation.text in str(line.content)
        assert not app.translations.display
        await pilot.press("t")
        await pilot.pause()
        assert app.translations.display
        assert [t.translated for t in app.translations.lines] == [translation.text]
        assert translation.text not in str(line.content)  # not shown twice
        await pilot.press("t")
        await pilot.pause()
        assert translation.text in str(line.content)


async def test_an_empty_translation_shows_no_empty_line(tmp_path: Path) -> None:
    script = demo_script()
    translation = next(e for e in script if isinstance(e, Translation))
    empty = dataclasses.replace(translation, lang="fr", text="  ")
    script.insert(script.index(translation) + 1, empty)
    app, _ = scripted_app(script, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        line = app.captions.lines[translation.segment]
        assert line.entry.translations == ((translation.lang, translation.text),)
        assert "fr:" not in str(line.content)
        assert [t.translated for t in app.translations.lines] == [translation.text]


async def test_keyword_hits_are_logged_newest_first_and_glow_briefly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A glow that outlasts any machine load while the script plays, then a short one.
    monkeypatch.setattr("harken.app.tui.widgets.keywords.FRESH_S", 600.0)
    script = demo_script()
    app, _ = scripted_app(script, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        hits = [e for e in script if isinstance(e, Keyword)]
        assert [r.keyword for r in app.keywords.rows] == [h.keyword for h in reversed(hits)]
        assert app.keywords.rows[0].has_class("-fresh")
        monkeypatch.setattr("harken.app.tui.widgets.keywords.FRESH_S", 0.05)
        row = app.keywords.add_hit(keyword="stop", start=1.0, score=0.9)
        assert app.keywords.rows[0] is row
        assert row.has_class("-fresh")
        await until(pilot, lambda: not row.has_class("-fresh"), "the highlight to fade")


async def test_engine_errors_are_notifications_not_crashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = stream_error("audio device lost; reconnect it or pick another with --device")
    failure = HarkenError("model failed to load; check --captions-model")
    app, _ = scripted_app([final(0, 0.0, 1.0, "before the error"), problem], out_dir=tmp_path,
                          fail_with=failure)
    shown: list[tuple[str, str]] = []
    notify = app.notify

    def recording(message: str, **kwargs: Any) -> None:
        shown.append((message, kwargs.get("severity", "information")))
        notify(message, **kwargs)

    monkeypatch.setattr(app, "notify", recording)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.state == "error", "the session to fail")
        assert (problem.message, "warning") in shown
        assert (str(failure), "error") in shown
        assert app.is_running
        assert texts(app) == ["before the error"]
        await until(pilot, lambda: len(app.query("Toast")) == 2, "two toasts on screen")
        await pilot.press("q")
    # The CLI re-raises the failure after the app closes (and prints the HarkenError in it).
    assert app.failure is not None
    assert first_user_error(app.failure) is failure


async def test_diarization_key_says_when_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = scripted_app(demo_script(), out_dir=tmp_path)
    shown: list[str] = []
    monkeypatch.setattr(app, "notify", lambda message, **kw: shown.append(message))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await pilot.pause()
    assert len(shown) == 1
    assert "--diarize" in shown[0]


@pytest.mark.parametrize("diarize", [True, False])
async def test_diarization_key_switches_a_session_started_with_diarize(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, diarize: bool) -> None:
    switched: list[bool] = []

    class DiarizingSession(ScriptedSession):
        def set_diarization(self, on: bool) -> None:
            switched.append(on)

    def make(tui: Sink) -> RunnableSession:
        return DiarizingSession(demo_script(), [tui])

    config = fake_config(tmp_path).model_copy(
        update={"speakers": SpeakersConfig(enabled=diarize)})
    app = build_app(config, stem=STREAM, session=make, device="test")
    shown: list[str] = []
    monkeypatch.setattr(app, "notify", lambda message, **kw: shown.append(message))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d", "d")
        await pilot.pause()
    if diarize:  # --diarize starts it on: the first `d` turns it off
        assert switched == [False, True]
        assert shown == ["Diarization off.", "Diarization on."]
    else:  # no speaker models were loaded: nothing to switch, say how to get them
        assert switched == []
        assert len(shown) == 2
        assert all("--diarize" in m for m in shown)


async def test_help_opens_and_closes(tmp_path: Path) -> None:
    app, _ = scripted_app(demo_script(), out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_command_palette_runs_the_same_actions(tmp_path: Path) -> None:
    app, _ = scripted_app(demo_script(), out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session_done, "the script to end")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Pause / resume", "Clear", "Toggle translation pane",
                      "Toggle diarization", "Export session", "Keys"):
            assert title in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"export session")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await until(pilot, lambda: bool(app.last_export), "the export from the palette")


class BufferedSink:
    """Writes its file only in `finally`: proves quitting waits for the sinks to close."""

    def __init__(self, path: Path) -> None:
        self.name = "buffered"
        self.path = path

    async def consume(self, events: Any) -> None:
        seen: list[str] = []
        try:
            async for event in events:
                if isinstance(event, CaptionFinal):
                    seen.append(event.text)
        finally:
            self.path.write_text("\n".join(seen))


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_quit_stops_the_engine_and_closes_every_file(tmp_path: Path, key: str) -> None:
    never = Gate()  # the input never ends by itself (like a microphone)
    script: list[Event | Gate] = [final(0, 0.0, 1.0, "first words"),
                                  final(1, 1.5, 2.5, "second words"), never]
    buffered = BufferedSink(tmp_path / "buffered.txt")
    srt = SrtSink(path=tmp_path / "live.srt")
    app, _ = scripted_app(script, out_dir=tmp_path, file_sinks=[buffered, srt])
    assert app.info.outputs == (f"{tmp_path / 'buffered'}.txt", f"{tmp_path / 'live'}.srt")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: never.reached.is_set() and len(app.captions.lines) == 2,
                    "both finals")
        await pilot.press(key)
        await until(pilot, lambda: not app.is_running, "the app to exit")
    assert app.session_done
    assert app.return_code == 0
    assert buffered.path.read_text() == "first words\nsecond words"
    assert "second words" in srt.path.read_text()


@pytest.mark.parametrize("finishes", [True, False])
async def test_a_stop_request_finishes_the_heard_speech_and_a_second_stops_at_once(
        tmp_path: Path, finishes: bool) -> None:
    """SIGTERM, SIGHUP or a terminal that is gone (app.request_stop): the first ends the
    input and the app exits once the session has finished; when it does not finish, a
    second request cancels it, and every file is still closed."""
    never = Gate()  # a microphone: the input ends only when the engine is stopped
    script: list[Event | Gate] = [final(0, 0.0, 1.0, "first words"), never,
                                  final(1, 1.5, 2.5, "finished after the stop")]
    buffered = BufferedSink(tmp_path / "buffered.txt")
    app, made = scripted_app(script, out_dir=tmp_path, file_sinks=[buffered])
    stopped: list[bool] = []
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: never.reached.is_set(), "the open input")
        engine: Any = made[0].engine
        engine.stop = lambda: (stopped.append(True), never.open() if finishes else None)
        app.request_stop(signal.SIGTERM)
        if not finishes:
            await pilot.pause(0.2)
            assert app.is_running  # still waiting for the heard speech
            app.request_stop(signal.SIGTERM)
        await until(pilot, lambda: not app.is_running, "the app to exit")
    assert stopped == [True]
    assert app.stops == [signal.SIGTERM] * (1 if finishes else 2)
    said = "first words\nfinished after the stop" if finishes else "first words"
    assert buffered.path.read_text() == said


def test_outputs_label_folds_formats_of_one_stem() -> None:
    paths = [Path("out/mic.srt"), Path("out/mic.vtt"), Path("out/other.txt")]
    assert outputs_label(paths) == ("out/mic.{srt,vtt}", "out/other.txt")


# ---- the sink and message coalescing ---------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Unviewed(Event):
    type: ClassVar[str] = "unviewed"


class CountingApp(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.levels: list[tuple[str, float]] = []
        self.finals: list[str] = []

    def on_level_update(self, message: LevelUpdate) -> None:
        self.levels.append((message.event.stream, message.event.dbfs))

    def on_final_caption(self, message: FinalCaption) -> None:
        self.finals.append(message.event.text)


async def test_bursts_of_levels_coalesce_and_finals_never_drop() -> None:
    bus = EventBus()
    sub = bus.subscribe("tui", maxsize=10_000)
    burst = [level(i / 10, -60 + i * 0.01, False) for i in range(1000)]
    for event in burst:
        await bus.publish(event)
    await bus.publish(final(0, 0.0, 1.0, "kept"))
    for event in burst[:500]:
        await bus.publish(event)
    await bus.close()
    app = CountingApp()
    async with app.run_test() as pilot:
        sink = TuiSink(target=app)
        await sink.consume(sub)  # posts everything before the app handles any of it
        await pilot.pause()
        await until(pilot, lambda: bool(app.finals) and len(app.levels) >= 2, "delivery")
    assert sink.posted == 1501
    assert app.finals == ["kept"]
    # One handled level per uninterrupted run of levels: the newest of each.
    assert app.levels == [(STREAM, burst[-1].dbfs), (STREAM, burst[499].dbfs)]


async def test_levels_of_different_streams_do_not_replace_each_other() -> None:
    app = CountingApp()
    async with app.run_test() as pilot:
        sink = TuiSink(target=app)
        a = level(0.0, -10.0, True)
        b = level(0.0, -20.0, True).__class__(stream="other", start=0.0, end=0.1, dbfs=-20.0,
                                               speech=True)

        async def events() -> AsyncIterator[Event]:
            for e in (a, b):
                yield e

        await sink.consume(events())
        await until(pilot, lambda: len(app.levels) == 2, "both levels")
    assert app.levels == [(STREAM, -10.0), ("other", -20.0)]


async def test_events_without_a_view_are_skipped() -> None:
    app = CountingApp()
    async with app.run_test():
        sink = TuiSink(target=app)
        odd = Unviewed(stream=STREAM, start=0.0, end=0.0)

        async def events() -> AsyncIterator[Event]:
            yield odd

        await sink.consume(events())
    assert (sink.posted, sink.skipped) == (0, 1)


# ---- pause with the real engine --------------------------------------------------------

class EchoStage(QuietStage):
    """A caption stage without a model: 'segment N' for each VAD segment of the real engine."""

    name = "captions"

    def __init__(self, ctx: StageContext) -> None:
        self.stream = ctx.stream
        self.segment: int | None = None
        self.start = 0
        self.samples = 0

    def on_start(self, start: SegmentStart) -> None:
        self.segment, self.start, self.samples = start.segment, start.start, 0

    def on_audio(self, audio: SegmentAudio) -> None:
        self.samples += len(audio.samples)

    async def step(self) -> list[Event]:
        if self.segment is None or not self.samples:
            return []
        return [CaptionPartial(stream=self.stream, start=self.start / SAMPLE_RATE,
                               end=(self.start + self.samples) / SAMPLE_RATE,
                               segment=self.segment, text=f"segment {self.segment} so far")]

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        self.segment = None
        return [CaptionFinal(stream=self.stream, start=self.start / SAMPLE_RATE,
                             end=end.end / SAMPLE_RATE, segment=end.segment,
                             text=f"segment {end.segment} said")]


class GatedSource:
    """Audio blocks of an array; waits at given sample positions until a gate opens."""

    description = "file sample.wav (twice)"

    def __init__(self, samples: np.ndarray, gates: dict[int, Gate]) -> None:
        self.samples = samples
        self.gates = gates

    async def __aenter__(self) -> GatedSource:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        block = SAMPLE_RATE // 10
        for start in range(0, len(self.samples), block):
            gate = self.gates.get(start)
            if gate is not None:
                gate.reached.set()
                await gate.opened.wait()
            yield AudioBlock(stream="sample", start=start,
                             samples=self.samples[start:start + block])


class EngineSession:
    """The real Engine (VAD, bus, pause) with the model-free EchoStage."""

    def __init__(self, source: GatedSource, sinks: list[Sink]) -> None:
        self.source = source
        self.sinks = sinks
        self.engine: Engine | None = None

    async def run(self) -> object:
        async with InferenceWorker(name="cpu", max_batch=1) as worker:
            self.engine = Engine(sources=[self.source], stages=[EchoStage], worker=worker,
                                 options=EngineOptions(live=False))
            subs = [(sink, self.engine.subscribe(sink.name)) for sink in self.sinks]
            async with asyncio.TaskGroup() as tg:
                for sink, sub in subs:
                    tg.create_task(sink.consume(sub))
                await self.engine.run()
        return self.engine


async def test_pause_stops_captions_until_resume(tmp_path: Path) -> None:
    speech, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == SAMPLE_RATE
    block = SAMPLE_RATE // 10
    second = -(-len(speech) // block) * block  # the second copy starts on a block boundary
    audio = np.concatenate([speech, np.zeros(second - len(speech), np.float32), speech])
    pause_at, resume_at = Gate(), Gate()
    pause_s = 4.8  # after the sample's first utterance (0.2-4.2 s) has ended
    source = GatedSource(audio, {round(pause_s * SAMPLE_RATE): pause_at, second: resume_at})
    made: list[EngineSession] = []

    def make(tui: Sink) -> RunnableSession:
        made.append(EngineSession(source, [tui]))
        return made[0]

    app = build_app(fake_config(tmp_path), stem="sample", session=make, device="test")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: pause_at.reached.is_set() and len(app.captions.lines) == 1,
                    "the first caption")
        await pilot.press("space")
        engine = made[0].engine
        assert engine is not None
        assert engine.paused
        assert app.state == "paused"
        pause_at.open()
        await until(pilot, lambda: resume_at.reached.is_set(), "the paused part to pass")
        await pilot.pause(0.1)
        # The second utterance was spoken while paused: no caption, no partial.
        assert texts(app) == ["segment 0 said"]
        assert not any(app.captions.partial_texts.values())
        assert engine.streams["sample"].paused_samples >= second - pause_s * SAMPLE_RATE
        await pilot.press("space")
        assert not engine.paused
        assert app.state == "live"
        resume_at.open()
        await until(pilot, lambda: app.session_done, "the input to end")
        lines = app.captions.lines
        assert len(lines) == 3  # the second copy's two utterances
        assert all(line.entry.start >= second / SAMPLE_RATE for line in lines[1:])


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_quit_mid_speech_finishes_the_open_segment_in_every_file(
        tmp_path: Path, key: str) -> None:
    """Like Ctrl-C without the app: the speech heard so far gets its final, in the files too,
    before the app closes (it was cancelled, and the segment open at that moment was lost)."""
    speech, rate = sf.read(SAMPLE, dtype="float32")
    assert rate == SAMPLE_RATE
    mid_first = Gate()  # the input stops arriving (a microphone) inside the first utterance
    source = GatedSource(speech, {2 * SAMPLE_RATE: mid_first})
    buffered = BufferedSink(tmp_path / "buffered.txt")
    srt = SrtSink(path=tmp_path / "live.srt")
    made: list[EngineSession] = []

    def make(tui: Sink) -> RunnableSession:
        made.append(EngineSession(source, [tui, buffered, srt]))
        return made[0]

    app = build_app(fake_config(tmp_path), stem="sample", session=make, device="test")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: mid_first.reached.is_set() and made[0].engine is not None,
                    "the middle of the first utterance")
        await pilot.press(key)
        await until(pilot, lambda: not app.is_running, "the app to exit")
    assert app.session_done
    assert app.return_code == 0
    assert buffered.path.read_text() == "segment 0 said"
    assert "segment 0 said" in srt.path.read_text()


async def test_status_bar_shows_the_mqtt_connection_as_it_changes(tmp_path: Path) -> None:
    mqtt = MqttSink(settings=MqttSettings(host="broker.local", port=1883),
                    options=MqttSinkOptions(site="kitchen"))

    def make(tui: Sink) -> RunnableSession:
        return ScriptedSession(demo_script(), [tui])  # the MQTT sink is never started here

    app = build_app(fake_config(tmp_path), stem=STREAM, session=make, device="test",
                    file_sinks=[mqtt])
    async with app.run_test(size=SIZE) as pilot:
        assert app.status.info.mqtt == "connecting mqtt://broker.local:1883"
        mqtt.connected = True
        await until(pilot, lambda: app.status.info.mqtt == "connected mqtt://broker.local:1883",
                    "the connected state")
        mqtt.connected = False
        mqtt.connect_failures = 1
        await until(pilot, lambda: (app.status.info.mqtt or "").startswith("down"),
                    "the lost connection")
    assert app.info.outputs == ()  # MQTT is not a file


def test_status_lists_the_models_of_every_task_that_runs(tmp_path: Path) -> None:
    config = fake_config(tmp_path).model_copy(update={
        "captions": CaptionsConfig(model="/models/my-ctc/"),
        "keywords": KeywordsConfig(enabled=True, model="org/kws-model"),
    })
    assert configured_models(config) == ("my-ctc", "kws-model")
    assert configured_models(fake_config(tmp_path)) == ("hubert-large-ls960-ft",)


async def test_a_pause_from_elsewhere_shows_in_the_status(tmp_path: Path) -> None:
    gate, end = Gate(), Gate()
    app, made = scripted_app([level(0.0, -30.0, False), gate, level(0.1, -30.0, False), end],
                             out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: gate.reached.is_set() and app.state == "live", "live")
        engine = made[0].engine
        assert engine is not None
        engine.pause()  # as the MQTT control topic does
        gate.open()
        await until(pilot, lambda: app.state == "paused", "the paused state")
        assert app.meter.paused
        end.open()
