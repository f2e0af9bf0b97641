"""The terminal app of `harken run`: live captions, speakers, keywords, levels and status.

The engine runs inside the app's event loop as one task the app owns (started on mount,
cancelled and awaited on quit so every file sink closes). The UI is a sink like any other:
TuiSink posts one message per event, and the handlers below route them to the widgets.

    app = build_app(config, sources=[source], file_sinks=sinks, live=True, stem="mic")
    app.run()

Tests build the same app with `session=` a scripted fake and drive it with Textual's Pilot.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, Protocol

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from harken.app.config import HarkenConfig
from harken.app.session import Session, Stopped
from harken.app.tasks.loader import ModelLoader
from harken.app.tui.colours import SpeakerColours
from harken.app.tui.driver import HarkenDriver, TerminalGone
from harken.app.tui.export import SessionRecord, export_session
from harken.app.tui.help import HelpScreen
from harken.app.tui.messages import (
    EngineMessage,
    EngineProblem,
    FinalCaption,
    KeywordHit,
    LevelUpdate,
    PartialCaption,
    RefinedCaption,
    SessionEnded,
    SpeechBoundary,
    StatsUpdate,
    TranslationArrived,
    TurnClosed,
)
from harken.app.tui.sink import TuiSink
from harken.app.tui.widgets.captions import CaptionsLog
from harken.app.tui.widgets.keywords import KeywordLog
from harken.app.tui.widgets.level import LevelMeter
from harken.app.tui.widgets.status import StatusBar, StatusInfo
from harken.app.tui.widgets.timeline import SpeakerTimeline
from harken.app.tui.widgets.translations import TranslationPane
from harken.engine.events import SpeechStarted
from harken.engine.mqtt.sink import MqttSink
from harken.engine.pipeline import OpenableSource, Pausable
from harken.engine.sinks.base import Sink
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import HarkenError, first_user_error

ERROR_NOTIFY_S = 10.0  # s an error notification stays up
MQTT_POLL_S = 1.0  # s between looks at the MQTT sink's connection state
STOPPED_NOTIFY_S = 3600.0  # s: the engine stopped for good; keep saying why (click hides it)

#: what signal.getsignal returns and signal.signal takes back
SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class RunnableSession(Protocol):
    """What the app runs: app/session.py's Session, or a scripted fake in tests.

    `engine` is None until the engine runs (the model loads first). A session that can
    switch diarization also has `set_diarization(on: bool)` (app/session.py's Session has; it works
    when the session was started with --diarize); otherwise `d` says how to get it.
    """

    @property
    def engine(self) -> Pausable | None: ...

    async def run(self) -> object: ...


#: Builds the session around the TUI sink (the app makes the sink: it is the target).
SessionFactory = Callable[[Sink], RunnableSession]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppInfo:
    stem: str  # export file names start with this (the stream id)
    device: str  # input description for the level panel
    out_dir: Path  # where `e` exports
    sample_rate: int = SAMPLE_RATE
    models: tuple[str, ...] = ()
    compute: str = ""
    outputs: tuple[str, ...] = ()  # files the run writes (--out)
    show_streams: bool = False  # every caption names its stream (satellites: the site)




class HarkenApp(App[int]):
    CSS_PATH = "tui.tcss"
    TITLE = "Harken"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_pause", "Pause"),
        Binding("c", "clear", "Clear"),
        Binding("t", "toggle_translations", "Transl."),
        Binding("d", "toggle_diarization", "Diar."),
        Binding("e", "export", "Export"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, *, config: HarkenConfig, info: AppInfo, make_session: SessionFactory,
                 sources: Sequence[OpenableSource] = (),
                 mqtt_sinks: Sequence[MqttSink] = (), stop_signals: bool = False) -> None:
        # HarkenDriver: Textual's driver, which also notices a terminal that is gone.
        super().__init__(driver_class=HarkenDriver)
        self.config = config
        self.info = info
        self.sink = TuiSink(target=self)
        self.session = make_session(self.sink)
        self.record = SessionRecord()
        self.colours = SpeakerColours()
        #: The exception the session ended with, for the CLI to report after the app exits.
        self.failure: BaseException | None = None
        self.last_export: list[Path] = []
        self._sources = list(sources)
        self._mqtt = list(mqtt_sinks)
        self._session_task: asyncio.Task[None] | None = None
        self._state = "loading"
        self._diarization = config.speakers.enabled  # --diarize starts it on; `d` switches
        self._device_known = False
        #: SIGTERM, SIGHUP (or a terminal gone, as SIGHUP) that asked the run to stop, in order
        self.stops: list[int] = []
        self._stop_signals = stop_signals  # the CLI's app handles them; tests' apps do not
        self._previous_handlers: dict[int, SignalHandler] = {}
        self._stopping_now = False
        self._quitting = False  # q pressed once: finishing the speech heard, then closing

    # ---- layout -------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield CaptionsLog(colours=self.colours, show_streams=self.info.show_streams,
                                  id="captions")
                yield TranslationPane(id="translations")
            with Vertical(id="side"):
                yield LevelMeter(device=self.info.device, sample_rate=self.info.sample_rate,
                                 id="level")
                yield KeywordLog(id="keywords")
        yield SpeakerTimeline(colours=self.colours, id="timeline")
        yield StatusBar(StatusInfo(models=self.info.models, device=self.info.compute,
                                   outputs=self.info.outputs, mqtt=self._mqtt_state()),
                        id="status")
        yield Footer()

    @property
    def captions(self) -> CaptionsLog:
        return self.query_one(CaptionsLog)

    @property
    def timeline(self) -> SpeakerTimeline:
        return self.query_one(SpeakerTimeline)

    @property
    def keywords(self) -> KeywordLog:
        return self.query_one(KeywordLog)

    @property
    def translations(self) -> TranslationPane:
        return self.query_one(TranslationPane)

    @property
    def meter(self) -> LevelMeter:
        return self.query_one(LevelMeter)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def state(self) -> str:
        """loading, live, paused, stopping (quitting once the speech heard is finished),
        finished or error."""
        return self._state

    @property
    def session_done(self) -> bool:
        return self._session_task is not None and self._session_task.done()

    def _set_state(self, state: str) -> None:
        self._state = state
        self.status.show(replace(self.status.info, state=state))
        self.meter.set_paused(state == "paused")

    # ---- the engine task ----------------------------------------------------------------
    def on_mount(self) -> None:
        if self._stop_signals:
            self._handle_stop_signals()
        self._session_task = asyncio.create_task(self._run_session(), name="harken-session")
        if self._mqtt:
            self.set_interval(MQTT_POLL_S, self._show_mqtt, name="mqtt-state")

    def _mqtt_state(self) -> str | None:
        """'connected mqtt://host:1883', 'connecting …' or 'down …'; None without MQTT."""
        if not self._mqtt:
            return None
        states = []
        for sink in self._mqtt:
            address = sink.settings.address
            if sink.connected:
                states.append(f"connected {address}")
            elif sink.connects == 0 and sink.connect_failures == 0:
                states.append(f"connecting {address}")
            else:
                states.append(f"down {address} (retrying)")
        return ", ".join(states)

    def _show_mqtt(self) -> None:
        self.status.show(replace(self.status.info, mqtt=self._mqtt_state()))

    async def _run_session(self) -> None:
        error: str | None = None
        try:
            await self.session.run()
        except Exception as exc:  # reported in the UI and, after exit, by the CLI
            self.failure = exc
            found = first_user_error(exc)
            error = str(found) if found is not None else \
                f"unexpected {type(exc).__name__}: {exc} (rerun with HARKEN_DEBUG=1 for details)"
        self.post_message(SessionEnded(error=error))

    async def stop_session(self) -> None:
        """Cancel the engine and wait until every sink has closed its files."""
        task = self._session_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    # ---- stopping from outside: SIGTERM, SIGHUP, a terminal that is gone ----------------
    def _handle_stop_signals(self) -> None:
        """SIGTERM and SIGHUP stop the run as they do without the app (app/session.py
        run_stoppable); an ignored hangup (nohup) stays ignored."""
        loop = asyncio.get_running_loop()
        hangup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
        for sig in (signal.SIGTERM, *hangup):
            self._previous_handlers[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, self.request_stop, sig)

    def restore_signals(self) -> None:
        """Puts back the handlers the app replaced (its loop's close resets them to the
        default), so a signal on the way out (the broker stopping) still stops cleanly."""
        for sig, previous in self._previous_handlers.items():
            # SIGHUP's default would kill the process unflushed: a later one stops at once,
            # as a second Ctrl-C does; after a stop that finished it is ignored (the
            # process is on its way out, everything flushed; see app/session.py).
            hup_default = sig == signal.SIGHUP and previous is signal.SIG_DFL
            if sig == signal.SIGHUP and self.stops:
                signal.signal(sig, signal.SIG_IGN)
            else:
                signal.signal(sig, signal.default_int_handler if hup_default else previous)
        self._previous_handlers.clear()

    def request_stop(self, signum: int) -> None:
        """The first stop request (SIGTERM, SIGHUP, the terminal gone) ends the input and
        lets the speech already heard finish, its finals made and written, then the app
        exits; a second stops at once. Either way every file is flushed and closed, and
        run_tui raises Stopped(first signal) for the CLI's exit status (128 + it)."""
        self.stops.append(signum)
        stop = getattr(self.session.engine, "stop", None)
        if len(self.stops) == 1 and callable(stop) and not self.session_done:
            stop()
            self.notify("Finishing the speech already heard (a second signal stops at once).",
                        title="Stopping", timeout=STOPPED_NOTIFY_S)
            return
        if not self._stopping_now:
            self._stopping_now = True
            self.run_worker(self._stop_now(), name="stop-now")

    async def _stop_now(self) -> None:
        await self.stop_session()
        self.exit(0)

    def on_terminal_gone(self, _message: TerminalGone) -> None:
        # Nobody can see or quit the app any more: stop as the hangup would have.
        self.request_stop(signal.SIGHUP)

    def _engine_running(self) -> None:
        if self._state == "loading":
            self._set_state("live")
        if not self._device_known:
            self._device_known = True
            worker = getattr(self.session.engine, "worker", None)
            name = getattr(worker, "name", None)
            if isinstance(name, str) and name:
                self.status.show(replace(self.status.info, device=name))
            if self._sources:
                self.meter.device = ", ".join(s.description for s in self._sources)

    # ---- engine messages ----------------------------------------------------------------
    def _recorded(self, message: EngineMessage) -> None:
        self.record.add(message.event)
        self._engine_running()

    def on_partial_caption(self, message: PartialCaption) -> None:
        self._engine_running()
        self.captions.show_partial(message.event)
        self.timeline.advance(message.event.end)

    def on_final_caption(self, message: FinalCaption) -> None:
        self._recorded(message)
        event = message.event
        self.captions.add_final(event)
        if event.speaker:
            self.timeline.add_turn(event.speaker, event.start, event.end, from_caption=True)
        self.timeline.advance(event.end)

    def on_refined_caption(self, message: RefinedCaption) -> None:
        self._recorded(message)
        event = message.event
        if event.accepted:
            self.captions.replace_text(stream=event.stream, segment=event.segment,
                                       text=event.text)

    def on_level_update(self, message: LevelUpdate) -> None:
        self._engine_running()
        engine = self.session.engine
        if engine is not None and self._state in ("live", "paused") and \
                engine.paused != (self._state == "paused"):  # e.g. paused over MQTT
            self._set_state("paused" if engine.paused else "live")
        self.meter.set_level(message.event.dbfs, speech=message.event.speech)
        self.timeline.advance(message.event.end)

    def on_stats_update(self, message: StatsUpdate) -> None:
        self._engine_running()
        s = message.event
        self.status.show(replace(self.status.info, rtf=s.rtf,
                                 latency_p50_s=s.caption_latency_p50_s,
                                 latency_p95_s=s.caption_latency_p95_s,
                                 dropped=sum(s.dropped.values())))

    def on_speech_boundary(self, message: SpeechBoundary) -> None:
        self._recorded(message)
        e = message.event
        if isinstance(e, SpeechStarted):
            self.timeline.speech_started(e.stream, e.start)
        else:
            self.timeline.speech_ended(e.stream, e.start, e.end)

    def on_turn_closed(self, message: TurnClosed) -> None:
        self._recorded(message)
        e = message.event
        self.timeline.add_turn(e.speaker, e.start, e.end)

    def on_keyword_hit(self, message: KeywordHit) -> None:
        self._recorded(message)
        e = message.event
        self.keywords.add_hit(keyword=e.keyword, start=e.start, score=e.score)

    def on_translation_arrived(self, message: TranslationArrived) -> None:
        self._recorded(message)
        e = message.event
        if not e.text.strip():  # nothing to show (the printer skips it too)
            return
        self.captions.add_translation(stream=e.stream, segment=e.segment, lang=e.lang,
                                      text=e.text)
        self.translations.add_translation(start=e.start, lang=e.lang, text=e.text)

    def on_engine_problem(self, message: EngineProblem) -> None:
        self._recorded(message)
        e = message.event
        self.notify(e.message, title=f"{e.stream}: error",
                    severity="error" if e.fatal else "warning", timeout=ERROR_NOTIFY_S)

    def on_session_ended(self, message: SessionEnded) -> None:
        if self.stops or self._quitting:  # the heard speech is finished, as asked: done
            self.exit(0)
            return
        if message.error is None:
            self._set_state("finished")
            return
        self._set_state("error")
        self.notify(message.error, title="Engine stopped", severity="error",
                    timeout=STOPPED_NOTIFY_S)

    # ---- actions ------------------------------------------------------------------------
    def action_toggle_pause(self) -> None:
        engine = self.session.engine
        if self.session_done:
            self.notify("The input has ended; there is nothing to pause.", title="Pause")
        elif engine is None:
            self.notify("The model is still loading; pause once captions start.",
                        title="Pause")
        elif engine.paused:
            engine.resume()
            self._set_state("live")
        else:
            engine.pause()
            self._set_state("paused")

    def action_clear(self) -> None:
        self.captions.clear_captions()
        self.keywords.clear_hits()
        self.translations.clear_translations()
        self.timeline.clear_timeline()

    def action_toggle_translations(self) -> None:
        pane = self.translations
        pane.display = not pane.display
        self.captions.set_inline_translations(not pane.display)

    def action_toggle_diarization(self) -> None:
        control = getattr(self.session, "set_diarization", None)
        if not self.config.speakers.enabled or not callable(control):
            why = ("this session cannot switch it while running" if
                   self.config.speakers.enabled else
                   "start `harken run --diarize` to label speakers")
            self.notify(f"Diarization cannot be switched here: {why}.", title="Diarization",
                        severity="warning")
            return
        self._diarization = not self._diarization
        try:
            control(self._diarization)
        except HarkenError as exc:
            self._diarization = not self._diarization
            self.notify(str(exc), title="Diarization", severity="error",
                        timeout=ERROR_NOTIFY_S)
            return
        self.notify(f"Diarization {'on' if self._diarization else 'off'}.",
                    title="Diarization")

    async def action_export(self) -> None:
        folder = self.info.out_dir
        stem = f"{self.info.stem}-{datetime.now():%Y%m%d-%H%M%S}"
        n = 1
        while any(folder.glob(f"{stem}.*")):  # two exports in one second
            n += 1
            stem = f"{self.info.stem}-{datetime.now():%Y%m%d-%H%M%S}-{n}"
        try:
            paths = await export_session(self.record.events, config=self.config,
                                         folder=folder, stem=stem)
        except HarkenError as exc:
            self.notify(str(exc), title="Export failed", severity="error",
                        timeout=ERROR_NOTIFY_S)
            return
        self.last_export = paths
        lost = f" (the oldest {self.record.lost} events were not kept)" if self.record.lost \
            else ""
        kinds = ", ".join(p.suffix.lstrip(".") for p in paths)
        self.notify(f"{folder / stem}.* ({kinds}){lost}", title="Exported",
                    timeout=ERROR_NOTIFY_S)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """The first q or Ctrl-C ends the input and lets the speech already heard finish
        (open segments get their finals, written to every file), as Ctrl-C does without the
        app; the app closes once the session has ended. A second one stops at once."""
        stop = getattr(self.session.engine, "stop", None)
        if not self._quitting and not self.stops and not self.session_done \
                and callable(stop):
            self._quitting = True
            stop()
            self._set_state("stopping")
            self.notify("Finishing the speech already heard; press q again to stop at once.",
                        title="Quitting", timeout=ERROR_NOTIFY_S)
            return
        await self.stop_session()
        self.exit(0)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:  # type: ignore[type-arg]
        yield from super().get_system_commands(screen)
        yield SystemCommand("Pause / resume", "Stop or restart listening (space)",
                            self.action_toggle_pause)
        yield SystemCommand("Clear", "Empty the captions and keyword logs (c)",
                            self.action_clear)
        yield SystemCommand("Toggle translation pane",
                            "Translations in their own pane or under captions (t)",
                            self.action_toggle_translations)
        yield SystemCommand("Toggle diarization", "Speaker diarization on or off (d)",
                            self.action_toggle_diarization)
        yield SystemCommand("Export session",
                            "Write SRT, VTT, JSONL, TXT (and RTTM) of the session so far (e)",
                            self.action_export)
        yield SystemCommand("Keys", "Show the keys (?)", self.action_help)


def model_label(model: str) -> str:
    """A short name for a hub id or folder: its last path component."""
    return Path(model.rstrip("/")).name or model


def configured_models(config: HarkenConfig) -> tuple[str, ...]:
    """Short names of the models this configuration runs, captions first."""
    models = [config.captions.model]
    if config.keywords.enabled:
        models.append(config.keywords.model)
    if config.translation.languages:
        models.append(config.translation.model)
    if config.speakers.enabled:
        models += [config.speakers.diarization_model, config.speakers.model]
    return tuple(model_label(m) for m in models)


def outputs_label(paths: Sequence[Path]) -> tuple[str, ...]:
    """Files for the status bar, folded: out/mic.{srt,vtt} rather than two full paths."""
    groups: dict[Path, list[str]] = {}
    for path in paths:
        groups.setdefault(path.parent / path.stem, []).append(path.suffix.lstrip("."))
    return tuple(f"{base}.{exts[0]}" if len(exts) == 1 else f"{base}.{{{','.join(exts)}}}"
                 for base, exts in groups.items())


def build_app(config: HarkenConfig, *, stem: str, sources: Sequence[OpenableSource] = (),
              file_sinks: Sequence[Sink] = (), live: bool = True,
              models: ModelLoader | None = None, session: SessionFactory | None = None,
              device: str | None = None, show_streams: bool = False,
              stop_signals: bool = False) -> HarkenApp:
    """The one way to make the app: the CLI passes sources and output sinks (files, MQTT);
    tests pass `session`, a factory of a fake session around the TUI sink."""
    paths = [p for p in (getattr(s, "path", None) for s in file_sinks) if isinstance(p, Path)]

    def make_session(tui: Sink) -> RunnableSession:
        if session is not None:
            return session(tui)
        return Session(config=config, sources=list(sources), sinks=[tui, *file_sinks],
                       live=live, models=models or ModelLoader())

    info = AppInfo(
        stem=stem,
        device=device if device is not None else
        ", ".join(s.description for s in sources) or "no input",
        out_dir=config.output.dir,
        models=configured_models(config),
        compute=config.compute.device_type,
        outputs=outputs_label(paths),
        show_streams=show_streams,
    )
    return HarkenApp(config=config, info=info, make_session=make_session, sources=sources,
                     mqtt_sinks=[s for s in file_sinks if isinstance(s, MqttSink)],
                     stop_signals=stop_signals)


def run_tui(config: HarkenConfig, *, stem: str, source: OpenableSource,
            file_sinks: Sequence[Sink] = (), live: bool = True,
            show_streams: bool = False) -> int:
    """`harken run` on a terminal: run the app; re-raise the engine's failure after it
    closes so the CLI prints it and exits non-zero."""
    app = build_app(config, stem=stem, sources=[source], file_sinks=file_sinks, live=live,
                    show_streams=show_streams, stop_signals=True)
    try:
        app.run()
    finally:
        app.restore_signals()
    if app.failure is not None:
        raise app.failure
    if app.stops:
        raise Stopped(app.stops[0])
    return 0
