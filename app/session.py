"""The one factory: a configuration becomes a running session (sources, the enabled tasks'
stages from app/tasks/, sinks, MQTT from app/mqtt.py), for the CLI, the TUI and the tests;
the session is also what runtime controls act on."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harken.app.clips import live_vad_options
from harken.app.config import HarkenConfig
from harken.app.mqtt import MqttSetup
from harken.app.tasks.captions import caption_stages
from harken.app.tasks.keywords import keyword_selection, keyword_stages
from harken.app.tasks.loader import ModelLoader
from harken.app.tasks.refine import AUTO as REFINE_AUTO
from harken.app.tasks.refine import OFF as REFINE_OFF
from harken.app.tasks.refine import (
    refine_stages,
    refined_sinks,
    with_refine_resolved,
)
from harken.app.tasks.speakers import speaker_stages
from harken.app.tasks.translation import (
    LanguageSwitch,
    generation_options,
    language_switch,
    translated_sinks,
    translation_stages,
)
from harken.engine.mqtt.control import (
    KEYWORDS_NOT_RUNNING,
    TRANSLATION_NOT_RUNNING,
    ControlledSink,
)
from harken.engine.pipeline import LOCAL, Engine, EngineOptions, OpenableSource
from harken.engine.sinks.base import Sink
from harken.engine.sinks.files import JsonlSink, file_sink
from harken.engine.sinks.per_stream import PerStreamSink, file_stem
from harken.engine.sinks.printer import PrinterSink
from harken.engine.sources.file import FileSource
from harken.engine.sources.mic import MicSource
from harken.engine.stages.base import StageFactory
from harken.engine.stages.keywords import KeywordSelection
from harken.engine.stages.speakers import DiarizationSwitch
from harken.engine.stages.translation import GenerationWorker
from harken.engine.threads import CoreShare, ThreadBudget, available_cores, plan_threads
from harken.engine.worker import InferenceWorker
from harken.models.errors import (
    ConfigError,
    ControlError,
    KeywordError,
    SinkError,
    UnsupportedLanguageError,
)


class Stopped(KeyboardInterrupt):
    """A run that Ctrl-C (SIGINT) or SIGTERM stopped after it finished what it had heard."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


SINK_DRAIN_S = 5.0  # s the sinks get to write queued events after the engine failed

def engine_options(config: HarkenConfig, *, live: bool) -> EngineOptions:
    return EngineOptions(vad=live_vad_options(config), live=live,
                         vad_threads=config.vad.threads,
                         heap_trim_interval_s=config.compute.heap_trim_s)


def thread_budget(config: HarkenConfig, *, device_type: str) -> ThreadBudget:
    """The torch threads of the inference worker and the generation thread (engine/threads.py):
    the configured counts, or a split of this machine's cores that never oversubscribes."""
    c = config.compute
    # `device_type` is the device the models run on: refine.model = auto refines there only
    # on CUDA (app/tasks/refine.py chosen_model).
    model = config.refine.model.strip().lower()
    refine = model not in REFINE_OFF and (model != REFINE_AUTO or device_type == "cuda")
    return plan_threads(cores=available_cores(), device_type=device_type,
                        # Translation and refinement both run on the generation thread.
                        translation=bool(config.translation.languages) or refine,
                        refine=refine,
                        inference=c.inference_threads, generation=c.generation_threads)


def file_source(path: Path, *, stream_id: str, realtime: bool,
                config: HarkenConfig) -> OpenableSource:
    return FileSource(path=path, stream_id=stream_id, block_s=config.audio.block_s,
                      realtime=realtime)


async def check_source(source: OpenableSource) -> None:
    """Opens and closes a source: a bad file or device fails before any model is loaded."""
    async with source:
        pass


def mic_source(config: HarkenConfig, *, stream_id: str = "mic") -> OpenableSource:
    device: int | str | None = config.audio.device or None
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    return MicSource(device=device, stream_id=stream_id, block_s=config.audio.block_s)


def check_formats(config: HarkenConfig, formats: Sequence[str]) -> None:
    """RTTM holds speaker turns: asking for it without diarization is a mistake."""
    if "rttm" in formats and not config.speakers.enabled:
        raise ConfigError("--format rttm writes speaker turns: add --diarize (or set "
                          "speakers.enabled = true)")


def output_sinks(config: HarkenConfig, *, stem: str, formats: Sequence[str],
                 out_dir: Path | None = None) -> list[Sink]:
    """The file sinks of `--out` (or of `out_dir`: the TUI's export picks its own folder).
    Nothing is opened yet: a command checks `output_paths` with `check_new` first."""
    check_formats(config, formats)
    folder = out_dir if out_dir is not None else config.output.dir
    sinks = [file_sink(fmt, folder / f"{stem}.{fmt}") for fmt in dict.fromkeys(formats)]
    sinks += translated_sinks(config, stem=stem, formats=formats, folder=folder)
    return sinks


def output_paths(sinks: Sequence[Sink]) -> list[Path]:
    return [path for sink in sinks if isinstance(path := getattr(sink, "path", None), Path)]


def check_new(config: HarkenConfig, paths: Sequence[Path]) -> None:
    """Output files must not exist yet (unless output.overwrite): `harken transcribe
    talk.wav` beside its reference talk.txt, or a second run into the same folder, must not
    destroy them."""
    if config.output.overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise ConfigError(f"{', '.join(existing)} already exist(s); choose another --out "
                          "folder, move them away, or pass --overwrite to replace them")


def result_files(config: HarkenConfig, *, stem: str, per_stream: bool) -> list[Sink]:
    """The --out files; `per_stream` (satellites): one set per site, `<stem>-<site>.srt`,
    since each site has its own clock and their cues must not interleave."""
    formats = config.output.formats
    if not per_stream:
        return output_sinks(config, stem=stem, formats=formats)
    check_formats(config, formats)  # a bad format fails now, not on the first site

    def make(stream: str) -> list[Sink]:
        return output_sinks(config, stem=f"{stem}-{file_stem(stream)}", formats=formats)

    return [PerStreamSink(make=make, name="files")]


def mqtt_setup(config: HarkenConfig, *, input_url: str | None = None,
               live: bool = True) -> MqttSetup:
    """MQTT sink, satellite source and embedded broker as configured (docs/mqtt.md)."""
    return MqttSetup(config, input_url=input_url, live=live)


def terminal_sink(*, jsonl: bool, show_stream: bool = False) -> Sink:
    """`show_stream`: every printed line names its stream (satellites: the site), not only
    once a second one has spoken."""
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise SinkError("standard output is closed: run with it open, or write files with "
                        "--out DIR")
    return JsonlSink(stream=sys.stdout) if jsonl else PrinterSink(show_stream=show_stream)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStages:
    """What `task_stages` yields."""

    factories: list[StageFactory]
    #: Stages that close a segment after the speakers stage: translation, so that its
    #: generation (which borrows a core from the worker) starts once the speakers stage's
    #: last pass, which the segment's caption final waits for, is done.
    after_speakers: list[StageFactory] = field(default_factory=list)
    keywords: KeywordSelection | None = None  # None: keyword spotting is off
    languages: LanguageSwitch | None = None  # None: translation is off


@asynccontextmanager
async def task_stages(config: HarkenConfig, models: ModelLoader,
                      share: CoreShare | None = None) -> AsyncIterator[TaskStages]:
    """Stage factories of the enabled refine, keyword and translation tasks (none when all
    are off). Refinement and translation share one generation thread (refinement first).
    `share`: the cores the generation thread borrows from the inference worker."""
    c = config
    factories: list[StageFactory] = []
    keywords: KeywordSelection | None = None
    refiner = await models.refine(config) if c.refine.model else None
    if c.keywords.enabled:
        spotter = await models.keywords(config)
        keywords = keyword_selection(config, spotter)
        factories.append(keyword_stages(config, spotter, selection=keywords))
    if refiner is None and not c.translation.languages:
        yield TaskStages(factories=factories, keywords=keywords)
        return
    languages: LanguageSwitch | None = None
    translator = None
    if c.translation.languages:
        translator = await models.translation(config)
        translator.options = generation_options(config)
        languages = language_switch(config, translator)
    device = refiner.device if refiner is not None else translator.device if translator \
        is not None else "cpu"
    budget = share.budget if share is not None else \
        thread_budget(config, device_type=str(device).split(":")[0])
    async with GenerationWorker(name=str(device), threads=budget.generation,
                                nice=budget.generation_nice, share=share) as generator:
        if refiner is not None:
            captioner = await models.captions(config)
            # Right after the caption stage: it takes each segment's first pass at once.
            factories.insert(0, refine_stages(config, refiner, captioner, generator))
        after: list[StageFactory] = []
        if translator is not None and languages is not None:
            after.append(translation_stages(translator, languages.selection.targets,
                                            generator, selection=languages.selection))
        yield TaskStages(factories=factories, after_speakers=after, keywords=keywords,
                         languages=languages)


DIARIZATION_NOT_RUNNING = ("diarization is not running in this Harken session; start it with "
                           "`harken run --diarize` to label speakers")


@dataclass
class Session:
    """Everything one run needs; `run()` drives the engine and its sinks to the end.

    It is also what runtime controls act on (the MQTT control topic, the TUI): pause/resume
    its engine, switch the keywords, the translation languages and diarization of every
    stream, present and future. A control that cannot be applied raises ControlError and
    changes nothing.
    """

    config: HarkenConfig
    sources: list[OpenableSource]
    sinks: list[Sink]
    live: bool
    models: ModelLoader = field(default_factory=ModelLoader)  # the enabled tasks' models
    engine: Engine | None = field(default=None, init=False)
    _tasks: TaskStages | None = field(default=None, init=False, repr=False)  # while running
    _diarization: DiarizationSwitch = field(default_factory=DiarizationSwitch, init=False,
                                            repr=False)

    def __post_init__(self) -> None:
        # refine.model = auto means a model on CUDA and none on CPU (app/tasks/refine.py).
        self.config = with_refine_resolved(self.config)

    # ------------------------------------------------------------------ controls

    @property
    def paused(self) -> bool:
        return self.engine is not None and self.engine.paused

    @property
    def paused_by(self) -> frozenset[str]:
        return self.engine.paused_by if self.engine is not None else frozenset()

    def pause(self, *, by: str = LOCAL) -> None:
        self._running_engine().pause(by=by)

    def resume(self, *, by: str = LOCAL) -> None:
        """See Engine.resume: a remote resume never lifts a local pause."""
        self._running_engine().resume(by=by)

    def _running_engine(self) -> Engine:
        if self.engine is None:
            raise ControlError("this Harken session has no engine to control yet; retry once "
                               "it runs", code="unsupported")
        return self.engine

    def set_keywords(self, keywords: Sequence[str]) -> None:
        """Spot `keywords` (labels of the keyword model) on every stream from now on."""
        selection = self._tasks.keywords if self._tasks is not None else None
        if selection is None:
            raise ControlError(KEYWORDS_NOT_RUNNING, code="unsupported", command="keywords")
        try:
            selection.set(keywords)
        except KeywordError as exc:
            raise ControlError(str(exc), code="invalid_argument",
                               command="keywords") from exc

    def set_translation(self, language: str | None) -> None:
        """Translate every stream into `language` from the next segment on; None stops."""
        switch = self._tasks.languages if self._tasks is not None else None
        if switch is None:
            raise ControlError(TRANSLATION_NOT_RUNNING, code="unsupported",
                               command="translation")
        try:
            switch.set([] if language is None else [language])
        except UnsupportedLanguageError as exc:
            raise ControlError(str(exc), code="invalid_argument",
                               command="translation") from exc

    @property
    def diarization(self) -> bool:
        """Whether speakers are being labelled (the session runs with --diarize and the
        switch is on)."""
        return self.config.speakers.enabled and self._diarization.on

    def set_diarization(self, on: bool) -> None:
        """Diarization off (new audio is not analysed, captions get no speaker) or on again
        (known speakers are kept); only for a session started with --diarize."""
        if not self.config.speakers.enabled:
            raise ControlError(DIARIZATION_NOT_RUNNING, code="unsupported")
        self._diarization.set(on)

    # ------------------------------------------------------------------ run

    async def run_stoppable(self) -> Engine:
        """run(), where the first Ctrl-C, SIGTERM or SIGHUP (the terminal closed) ends the
        input and lets every open segment finish (its final made and written), and a second
        one stops at once. Raises Stopped after a stop that finished. Main thread only
        (signal handlers)."""
        loop = asyncio.get_running_loop()
        # SIGHUP too: the embedded broker runs in its own process group (engine/mqtt/broker.py),
        # so only a clean stop ends it when the terminal goes away.
        # Not under nohup (or `trap '' HUP`): an ignored hangup stays ignored.
        hangup = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
        signals = (signal.SIGINT, signal.SIGTERM, *hangup)
        previous = {sig: signal.getsignal(sig) for sig in signals}
        received: list[int] = []

        def restore(*, stopped: bool = False) -> None:
            """`stopped`: the stop has finished, everything is flushed and the process is
            on its way out: a later hangup is ignored, since one arriving as the loop closes
            would raise in its teardown, and after Python's own finalization (which puts
            back SIGHUP's default) it would kill the process."""
            for sig in signals:
                loop.remove_signal_handler(sig)
                # SIGHUP's default would kill the process unflushed (a closing terminal
                # often hangs up twice): from now on it stops at once, as a second Ctrl-C.
                hup_default = sig == signal.SIGHUP and previous[sig] is signal.SIG_DFL
                if sig == signal.SIGHUP and stopped:
                    signal.signal(sig, signal.SIG_IGN)
                else:
                    signal.signal(sig, signal.default_int_handler if hup_default
                                  else previous[sig])

        def on_signal(signum: int) -> None:
            received.append(signum)
            if len(received) == 1 and self.engine is not None:
                self.engine.stop()
                # After a hangup the terminal may be gone: the stop goes on without a word.
                with contextlib.suppress(OSError):
                    print("\nharken: stopping: finishing the speech already heard "
                          "(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
                return
            restore()  # the usual way: cancel now, outputs flushed and closed
            signal.raise_signal(signum)

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            engine = await self.run()
        finally:
            if not received or len(received) == 1:
                restore(stopped=bool(received))
        if received:
            raise Stopped(received[0])
        return engine

    async def run(self) -> Engine:
        captioner = await self.models.captions(self.config)
        diarize: list[StageFactory] = []
        if self.config.speakers.enabled:
            speakers = await self.models.diarization(self.config)
            diarize.append(speaker_stages(self.config, speakers, switch=self._diarization))
        budget = thread_budget(self.config, device_type=captioner.device.type)
        share = CoreShare(budget=budget) if budget.lend else None
        async with InferenceWorker(name=str(captioner.device),
                                   max_batch=self.config.compute.max_batch,
                                   threads=budget.inference, share=share) as worker, \
                task_stages(self.config, self.models, share) as tasks:
            engine = Engine(sources=self.sources, worker=worker,
                            stages=[caption_stages(self.config, captioner), *tasks.factories,
                                    *diarize, *tasks.after_speakers],
                            options=engine_options(self.config, live=self.live))
            self.engine = engine
            self._tasks = tasks
            for sink in self.sinks:  # e.g. the MQTT control topic acts on this session
                if isinstance(sink, ControlledSink):
                    sink.bind(self)
            try:
                await self._drive(engine)
            finally:
                self._tasks = None  # the tasks' models and threads are gone after this
        return engine

    async def _drive(self, engine: Engine) -> None:
        """The engine and the sinks, to the end of every source."""
        # Subtitle and transcript files carry the refined text (when refining).
        r = self.config.refine
        sinks = refined_sinks(self.sinks, enabled=bool(r.model),
                              max_wait_s=r.max_wait_s if self.live else None)
        subs = [(sink, engine.subscribe(sink.name)) for sink in sinks]
        async with asyncio.TaskGroup() as tg:
            sink_tasks = [tg.create_task(sink.consume(sub), name=f"sink-{sink.name}")
                          for sink, sub in subs]
            try:
                await engine.run()
            except BaseException:
                # The bus is closed: let the sinks write what was queued before the
                # failure (e.g. the error event itself) before the group cancels them.
                await asyncio.wait(sink_tasks, timeout=SINK_DRAIN_S)
                raise
