"""`harken bench all`: the five tasks together on one speech stream, paced in real time.

Captions, diarization + speaker identification, keyword spotting and translation run in one
session, exactly as `harken run --diarize --keywords --translate de` runs them: one inference
worker (captions, speakers, keywords share its thread and its batches), one generation thread
for translation, thread budgets and precision from the configuration. The stream is a speech
recording repeated to --seconds and paced in real time, so latencies are what a live user
would see and every graceful-degradation counter (skipped caption steps, widened speaker
steps, skipped keyword windows, skipped translation segments) shows whether the machine keeps
up.

Models are the full-size base architectures with random weights (app/bench/architectures.py):
same compute as the published checkpoints, meaningless outputs (and a random decoder never
stops early, so every translation runs to --max-new-tokens: the worst case).
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from harken.app.bench.architectures import (
    random_ctc,
    random_speaker_models,
    random_spotter,
    random_translator,
)
from harken.app.bench.captions import bench_audio, caption_latencies
from harken.app.bench.shared_audio import shared_audio_root
from harken.app.bench.speakers import rss_mb
from harken.app.config import (
    CaptionsConfig,
    ComputeConfig,
    HarkenConfig,
    KeywordsConfig,
    RefineConfig,
    SpeakersConfig,
    TranslationConfig,
)
from harken.app.session import Session, thread_budget
from harken.app.tasks.loader import ModelLoader
from harken.app.tasks.speakers import SpeakerModels
from harken.engine.events import Event, Stats
from harken.engine.pipeline import Engine
from harken.engine.stages.captions import CaptionStage
from harken.engine.stages.keywords import KeywordStage
from harken.engine.stages.speakers import SpeakerStage
from harken.engine.stages.translation import TranslationStage
from harken.engine.threads import available_cores
from harken.engine.worker import WorkerStats
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import ConfigError
from harken.models.loading import precision_of, resolve_device, resolve_dtype

STREAM = "bench"
SHARED_SPEECH = Path("diarization") / "pyannote_sample" / "sample.wav"  # in ../shared/audio
WARMUP_S = 3.0  # s of audio each model encodes before the run (kernel selection, allocator)


def default_audio() -> Path | None:
    """A two-party conversation from ../shared/audio when it is there (None: the sample)."""
    shared = shared_audio_root()
    if shared is not None and (shared / SHARED_SPEECH).is_file():
        return shared / SHARED_SPEECH
    return None


def _log(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr, flush=True)


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


class _Monitor:
    """A sink that samples RSS and the process's CPU time at every stats event."""

    name = "monitor"

    def __init__(self) -> None:
        self.rss: list[float] = []
        self.counters: dict[str, int] = {}

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            if isinstance(event, Stats):
                self.rss.append(rss_mb())
                self.counters = dict(event.counters)


def base_models(*, captions: str, device_type: str, dtype: str,
                precision: str) -> ModelLoader:
    """The five tasks' full-size random base architectures, as a session's ModelLoader."""
    kw: dict[str, Any] = {"device": device_type, "dtype": dtype, "precision": precision}
    segmenter, embedder = random_speaker_models("base", **kw)
    return ModelLoader(captioner=random_ctc(captions, **kw), spotter=random_spotter(**kw),
                       translator=random_translator(**kw),
                       speakers=SpeakerModels(segmenter=segmenter, embedder=embedder))


def _warm_up(models: ModelLoader) -> None:
    import numpy as np

    window = np.zeros(round(WARMUP_S * SAMPLE_RATE), np.float32)
    window[::7] = 0.1  # not all zeros: some kernels take shortcuts on them
    for model in (models.captioner, models.spotter,
                  *((models.speakers.segmenter, models.speakers.embedder)
                    if models.speakers else ())):
        if model is not None:
            n = SAMPLE_RATE if model is models.spotter else len(window)
            model.encode([window[:n]])


def stage_figures(engine: Engine, audio_s: float, worker: WorkerStats) -> dict[str, Any]:
    """Per task: RTF (its model's share of compute / audio), latencies and degradations."""
    state = engine.streams[STREAM]
    tasks: dict[str, Any] = {}
    busy, cpu = worker.busy_by_model, worker.cpu_by_model
    for stage in state.stages:
        lat = stage.latencies()
        counters = stage.counters()
        if isinstance(stage, CaptionStage):
            tasks["captions"] = {
                "model": stage.captioner.model_id,
                "rtf": _r(busy.get(stage.captioner.model_id, 0.0) / audio_s),
                "cpu_rtf": _r(cpu.get(stage.captioner.model_id, 0.0) / audio_s),
                **caption_latencies(state, stage),
                "steps_merged": counters["caption_steps_merged"],
            }
        elif isinstance(stage, SpeakerStage):
            ids = (stage.segmenter.model_id, stage.embedder.model_id)
            tasks["speakers"] = {
                "models": list(ids),
                "rtf": _r(sum(busy.get(i, 0.0) for i in ids) / audio_s),
                "cpu_rtf": _r(sum(cpu.get(i, 0.0) for i in ids) / audio_s),
                "turn_latency_p50_s": _r(lat["speaker_turn_latency_p50_s"]),
                "turn_latency_p95_s": _r(lat["speaker_turn_latency_p95_s"]),
                "step_p95_s": _r(lat["speaker_step_p95_s"]),
                "steps": stage.steps,
                "steps_widened": stage.widened_steps,
                "steps_merged": stage.merged_steps,
                "steps_skipped": stage.skipped_steps,
                # Steps in flight cancelled at a segment's end: its last pass covers them.
                "steps_superseded": state.superseded_steps,
            }
        elif isinstance(stage, KeywordStage):
            tasks["keywords"] = {
                "model": stage.spotter.model_id,
                "rtf": _r(busy.get(stage.spotter.model_id, 0.0) / audio_s),
                "cpu_rtf": _r(cpu.get(stage.spotter.model_id, 0.0) / audio_s),
                "latency_p50_s": _r(lat["keyword_latency_p50_s"]),
                "latency_p95_s": _r(lat["keyword_latency_p95_s"]),
                "windows_scored": stage.scored,
                "windows_skipped": stage.skipped,
            }
        elif isinstance(stage, TranslationStage):
            tasks["translation"] = {
                "model": stage.translator.model_id,
                "rtf": _r(stage.generation_s / audio_s),
                "cpu_rtf": _r(stage.generation_cpu_s / audio_s),
                "latency_p50_s": _r(lat["translation_latency_p50_s"]),
                "latency_p95_s": _r(lat["translation_latency_p95_s"]),
                "latency_per_audio_s_p95": _r(lat["translation_latency_per_audio_s_p95"]),
                "segments": stage.translated,
                "segments_skipped": stage.skipped,
            }
    return tasks


# The live targets of a paced run (issue #12): what "keeps up" means for each task.
FINAL_P95_TARGET_S = 1.5  # caption final after a pause, as published (speaker label on)
KEYWORD_P95_TARGET_S = 1.0  # keyword hit after the word's end
TRANSLATION_TARGET = 2.0  # translation done within this many times its segment's length


def targets(tasks: dict[str, Any]) -> dict[str, Any]:
    """Each live target against the figures of `stage_figures`: value, target, met; `met`
    overall and the `missed` ones in words. A task that is absent is not checked."""
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, value: Any, target: str, met: bool) -> None:
        checks[name] = {"value": value, "target": target, "met": met}

    if (c := tasks.get("captions")) is not None:
        p95 = c["final_latency_p95_s"]
        check("caption_final_p95_s", p95, f"< {FINAL_P95_TARGET_S} s",
              p95 is not None and p95 < FINAL_P95_TARGET_S)
        check("caption_steps_merged", c["steps_merged"], "0", c["steps_merged"] == 0)
    if (k := tasks.get("keywords")) is not None:
        p95 = k["latency_p95_s"]
        check("keyword_p95_s", p95, f"< {KEYWORD_P95_TARGET_S} s",
              p95 is not None and p95 < KEYWORD_P95_TARGET_S)
        check("keyword_windows_skipped", k["windows_skipped"], "0", k["windows_skipped"] == 0)
    if (sp := tasks.get("speakers")) is not None:
        # Widened steps are the designed way of keeping up; skipped ones lose frames.
        check("speaker_steps_skipped", sp["steps_skipped"], "0", sp["steps_skipped"] == 0)
    if (t := tasks.get("translation")) is not None:
        ratio = t["latency_per_audio_s_p95"]
        check("translation_p95_per_audio", ratio, f"<= {TRANSLATION_TARGET}x its length",
              ratio is not None and ratio <= TRANSLATION_TARGET)
    missed = [f"{name} {c['value']} (target {c['target']})" for name, c in checks.items()
              if not c["met"]]
    return {"met": not missed, "missed": missed, "checks": checks}


def bench_all(*, seconds: float, audio: Path | None, device_type: str, dtype: str,
              precision: str, captions: str = "hubert-base", languages: tuple[str, ...] = ("de",),
              max_new_tokens: int = 48, inference_threads: int = 0, generation_threads: int = 0,
              verbose: bool = False, models: ModelLoader | None = None,
              realtime: bool = True) -> dict[str, Any]:
    """`models`: ready models (tests pass tiny ones); default: the random base set.
    `realtime=False` (--fast): unpaced and in order, nothing skipped, so each task's
    `cpu_rtf` is the compute it needs per second of speech."""
    if not 1 <= seconds <= 3600:
        raise ConfigError(f"--seconds must be between 1 and 3600, got {seconds}")
    speech = audio if audio is not None else default_audio()
    samples = bench_audio(speech, seconds)
    device = resolve_device(device_type)
    if models is None:
        _log(verbose, f"loading the five base architectures ({precision}) ...")
        models = base_models(captions=captions, device_type=device_type, dtype=dtype,
                             precision=precision)
    _warm_up(models)
    with tempfile.TemporaryDirectory() as tmp:
        config = HarkenConfig(refine=RefineConfig(model="none"),
            compute=ComputeConfig(device_type=device_type, dtype=dtype, precision=precision,
                                  inference_threads=inference_threads,
                                  generation_threads=generation_threads),
            captions=CaptionsConfig(model=captions),
            speakers=SpeakersConfig(enabled=True, store=Path(tmp) / "voiceprints.sqlite"),
            keywords=KeywordsConfig(enabled=True),
            translation=TranslationConfig(languages=list(languages),
                                          max_new_tokens=max_new_tokens))
        budget = thread_budget(config, device_type=device.type)
        wav = Path(tmp) / "bench.wav"
        sf.write(str(wav), samples, SAMPLE_RATE, subtype="FLOAT")
        from harken.app.session import file_source

        monitor = _Monitor()
        session = Session(config=config, live=realtime, models=models, sinks=[monitor],
                          sources=[file_source(wav, stream_id=STREAM, realtime=realtime,
                                               config=config)])
        _log(verbose, f"engine: {seconds:g} s of speech in real time ...")
        rss_start = rss_mb()
        cpu_start = os.times()
        started = time.perf_counter()
        engine = asyncio.run(session.run())
        wall = time.perf_counter() - started
        cpu_end = os.times()
    cpu_s = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    cores = available_cores()
    audio_s = engine.streams[STREAM].audio_samples / SAMPLE_RATE
    worker = engine.worker.stats
    result: dict[str, Any] = {
        "audio": str(speech) if speech is not None else "assets/sample.wav",
        "audio_s": round(audio_s, 1),
        "paced": realtime,
        "wall_s": round(wall, 1),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(resolve_dtype(device, dtype)).replace("torch.", ""),
        "precision": precision_of(models.captioner.model) if models.captioner else None,
        "weights": "random (full-size architectures: speed holds, outputs do not)",
        "cores": cores,
        "threads": {"inference": budget.inference, "generation": budget.generation},
        "tasks": stage_figures(engine, audio_s, worker),
        "worker": {"rtf": _r(worker.busy_s / audio_s),
                   "cpu_rtf": _r(worker.cpu_s / audio_s), "batches": worker.batches,
                   "windows": worker.windows,
                   "batch_sizes": dict(sorted(worker.batch_sizes.items()))},
        "cpu_share": round(cpu_s / (wall * cores), 3),
        "cpu_cores_used": round(cpu_s / wall, 2),
        "rss_start_mb": round(rss_start, 1),
        "rss_max_mb": round(max([rss_start, *monitor.rss]), 1),
        "rss_end_mb": round(rss_mb(), 1),
    }
    if device.type == "cuda":
        result["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    # Latencies of an unpaced run (--fast) are not what a live user sees: no targets then.
    result["targets"] = targets(result["tasks"]) if realtime else None
    if realtime:
        met = result["targets"]
        _log(verbose, "live targets: all met" if met["met"] else
             "live targets missed: " + "; ".join(met["missed"]))
    return result
