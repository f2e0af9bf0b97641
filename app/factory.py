"""The one place that turns a configuration into running parts (used by the CLI and tests)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harken.app.config import HarkenConfig
from harken.app.mqtt_setup import MqttSetup
from harken.app.speaker_cli import check_formats
from harken.app.speaker_stages import SpeakerModels, load_models, speaker_stages
from harken.app.task_stages import task_stages, translated_sinks
from harken.engine.captions import CaptionStage
from harken.engine.mqtt_control import ControlledSink
from harken.engine.pipeline import (
    Engine,
    EngineOptions,
    OpenableSource,
    Stage,
    StageContext,
    StageFactory,
)
from harken.engine.sinks import JsonlSink, PrinterSink, Sink, file_sink
from harken.engine.sources import FileSource, MicSource
from harken.engine.vad import VadOptions
from harken.engine.worker import InferenceWorker
from harken.models.captions import CtcCaptioner
from harken.models.keywords import KeywordSpotter
from harken.models.streaming import StreamingOptions
from harken.models.translation import SpeechTranslator

SINK_DRAIN_S = 5.0  # s the sinks get to write queued events after the engine failed

#: Loads a CTC captioner from (model id or folder, device type, dtype). Tests inject fakes.
CaptionerLoader = Callable[[str, str, str], CtcCaptioner]


def load_captioner(model: str, device_type: str, dtype: str) -> CtcCaptioner:
    return CtcCaptioner.from_pretrained(model, device=device_type, dtype=dtype)


def engine_options(config: HarkenConfig, *, live: bool) -> EngineOptions:
    v = config.vad
    return EngineOptions(
        vad=VadOptions(frame_ms=v.frame_ms, aggressiveness=v.aggressiveness,
                       pre_roll_s=v.pre_roll_s, hangover_s=v.hangover_s,
                       min_speech_s=v.min_speech_s, max_segment_s=v.max_segment_s,
                       split_search_s=v.split_search_s),
        live=live,
    )


def caption_stages(config: HarkenConfig, captioner: CtcCaptioner) -> StageFactory:
    c = config.captions
    options = StreamingOptions(hop_s=c.hop_s, left_context_s=c.left_context_s,
                               right_context_s=c.right_context_s)

    def make(ctx: StageContext) -> Stage:
        return CaptionStage(stream=ctx.stream, captioner=captioner, worker=ctx.worker,
                            options=options, live=ctx.live, arrivals=ctx.arrivals)

    return make


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


def output_sinks(config: HarkenConfig, *, stem: str, formats: Sequence[str],
                 out_dir: Path | None = None) -> list[Sink]:
    check_formats(config, formats)
    folder = out_dir if out_dir is not None else config.output.dir
    sinks = [file_sink(fmt, folder / f"{stem}.{fmt}") for fmt in formats]
    return sinks + translated_sinks(config, stem=stem, formats=formats, folder=folder)


def mqtt_setup(config: HarkenConfig, *, input_url: str | None = None) -> MqttSetup:
    """MQTT sink, satellite source and embedded broker as configured (docs/mqtt.md)."""
    return MqttSetup(config, input_url=input_url)


def terminal_sink(*, jsonl: bool) -> Sink:
    return JsonlSink(stream=sys.stdout) if jsonl else PrinterSink()


@dataclass
class Session:
    """Everything one run needs; `run()` drives the engine and its sinks to the end."""

    config: HarkenConfig
    sources: list[OpenableSource]
    sinks: list[Sink]
    live: bool
    loader: CaptionerLoader = load_captioner
    captioner: CtcCaptioner | None = None
    spotter: KeywordSpotter | None = None  # keyword model, when config.keywords.enabled
    translator: SpeechTranslator | None = None  # when config.translation.languages
    speakers: SpeakerModels | None = None  # when config.speakers.enabled
    engine: Engine | None = field(default=None, init=False)

    async def run(self) -> Engine:
        captioner = self.captioner
        if captioner is None:
            c = self.config
            # Loading blocks for seconds: keep the loop (and Ctrl-C) responsive meanwhile.
            captioner = await asyncio.to_thread(self.loader, c.captions.model,
                                                c.compute.device_type, c.compute.dtype)
        diarize: list[StageFactory] = []
        if self.config.speakers.enabled:
            speakers = self.speakers or await load_models(self.config)
            diarize.append(speaker_stages(self.config, speakers))
        async with InferenceWorker(name=str(captioner.device),
                                   max_batch=self.config.compute.max_batch) as worker, \
                task_stages(self.config, spotter=self.spotter,
                            translator=self.translator) as tasks:
            engine = Engine(sources=self.sources, worker=worker,
                            stages=[caption_stages(self.config, captioner), *tasks, *diarize],
                            options=engine_options(self.config, live=self.live))
            self.engine = engine
            for sink in self.sinks:  # e.g. the MQTT control topic acts on this engine
                if isinstance(sink, ControlledSink):
                    sink.bind(engine)
            subs = [(sink, engine.subscribe(sink.name)) for sink in self.sinks]
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
        return engine
