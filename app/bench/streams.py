"""`harken bench streams`: N concurrent streams through one batching inference worker.

N copies of a speech recording, each started at a different offset so that their segments do
not line up, run as N streams of one session (one process, one worker, one device), each
paced in real time, with captions and optionally speakers and keywords. The worker gathers
what every stream has queued and runs it as shared forward passes (windows of different
lengths padded together, in length buckets, when the model can pad: engine/worker.py).

Reports final (after a pause; VAD splits apart) and partial caption latency p50/p95 over all
streams, skipped steps, finals vs segments, the batch-size histogram, compute per
stream-second, and GPU memory/utilisation on CUDA. `--find-capacity` doubles N while the run
keeps up (p95 of the finals after a pause under the target, that of the VAD splits' finals
under the target plus split_search_s, no missing finals, no merged caption steps; a run with
no final after a pause does not count as keeping up; each run's "missed" lists why not),
then bisects between the last N that kept up and the first that did not.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from harken.app.bench.all import default_audio
from harken.app.bench.architectures import (
    RANDOM_CTC_ARCHS,
    random_ctc,
    random_speaker_models,
    random_spotter,
)
from harken.app.bench.captions import bench_audio
from harken.app.bench.soak import LagHistogram, probe_lag
from harken.app.bench.speakers import rss_mb
from harken.app.config import (
    CaptionsConfig,
    ComputeConfig,
    HarkenConfig,
    KeywordsConfig,
    RefineConfig,
    SpeakersConfig,
    VadConfig,
)
from harken.app.session import Session, file_source, thread_budget
from harken.app.tasks.loader import ModelLoader
from harken.app.tasks.speakers import SpeakerModels
from harken.engine.events import CaptionFinal, Event
from harken.engine.stages.captions import CaptionStage
from harken.engine.stages.keywords import KeywordStage
from harken.engine.stages.speakers import SpeakerStage
from harken.engine.threads import available_cores
from harken.engine.vad import VadEngine
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.errors import ConfigError
from harken.models.loading import precision_of, resolve_device

TASKS = ("captions", "speakers", "keywords")
FINAL_P95_TARGET_S = 0.5  # s: --find-capacity's bar for the final caption latency p95
GOLDEN = (math.sqrt(5) - 1) / 2  # stream offsets: i * GOLDEN of the clip, never aligned
MAX_STREAMS = 4096


def parse_tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or "captions" not in tasks:
        raise ConfigError(f"--tasks is captions[,speakers][,keywords], got {text!r}")
    return tasks


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


class _FinalCounter:
    name = "finals"

    def __init__(self) -> None:
        self.finals: dict[str, int] = {}

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            if isinstance(event, CaptionFinal):
                self.finals[event.stream] = self.finals.get(event.stream, 0) + 1


def load_models(*, model: str, tasks: Sequence[str], device_type: str, dtype: str,
                precision: str) -> ModelLoader:
    kw: dict[str, Any] = {"device": device_type, "dtype": dtype, "precision": precision}
    captioner = random_ctc(model, **kw) if model in RANDOM_CTC_ARCHS else \
        CtcCaptioner.from_pretrained(model, **kw)
    loader = ModelLoader(captioner=captioner)
    if "speakers" in tasks:
        segmenter, embedder = random_speaker_models("base", **kw)
        loader.speakers = SpeakerModels(segmenter=segmenter, embedder=embedder)
    if "keywords" in tasks:
        loader.spotter = random_spotter(**kw)
    return loader


WARM_BATCHES = (1, 8)  # windows per warm-up pass: the first passes pick kernels and grow
#                        the allocator, which the first run would otherwise pay for


def warm_up(models: ModelLoader) -> None:
    """A few forward passes of every loaded model before the first timed run."""
    parts: list[tuple[Any, float]] = []
    if models.captioner is not None:
        parts.append((models.captioner, 3.0))
    if models.speakers is not None:
        parts += [(models.speakers.segmenter, 5.0), (models.speakers.embedder, 5.0)]
    if models.spotter is not None:
        parts.append((models.spotter, 1.0))
    rng = np.random.default_rng(0)
    for model, seconds in parts:
        window = (0.01 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)
        for batch in WARM_BATCHES:
            model.encode([window] * batch)


def _stream_files(samples: np.ndarray, n: int, folder: Path) -> list[Path]:
    paths = []
    for i in range(n):
        shift = round((i * GOLDEN) % 1.0 * len(samples))
        path = folder / f"s{i}.wav"
        sf.write(str(path), np.roll(samples, -shift), SAMPLE_RATE, subtype="FLOAT")
        paths.append(path)
    return paths


def run_streams(n: int, *, models: ModelLoader, tasks: Sequence[str], samples: np.ndarray,
                config: HarkenConfig) -> dict[str, Any]:
    """One run of `n` paced streams; its figures."""
    device = models.captioner.device if models.captioner is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _stream_files(samples, n, Path(tmp))
        sources = [file_source(p, stream_id=p.stem, realtime=True, config=config)
                   for p in paths]
        counter = _FinalCounter()
        session = Session(config=config, sources=sources, sinks=[counter], live=True,
                          models=models)
        lags = LagHistogram()

        async def main() -> Any:
            # The lag probe says when the one event loop (every stream's VAD and stage
            # stepping) is the bottleneck rather than the worker or the device.
            probe = asyncio.create_task(probe_lag(lags), name="lag-probe")
            try:
                return await session.run()
            finally:
                probe.cancel()

        cpu_start = os.times()
        loop_cpu_start = time.thread_time()  # asyncio.run runs the loop on this thread
        started = time.perf_counter()
        engine = asyncio.run(main())
        wall = time.perf_counter() - started
        loop_cpu = time.thread_time() - loop_cpu_start
        cpu_end = os.times()
    final: list[float] = []
    split_final: list[float] = []
    ready: list[float] = []
    partial: list[float] = []
    skipped = {"caption_steps_merged": 0, "speaker_steps": 0, "speaker_steps_widened": 0,
               "keyword_windows": 0}
    superseded = 0
    segments = 0
    missing_finals = 0
    for stream_id, state in engine.streams.items():
        segments += state.segments
        missing_finals += max(0, state.segments - counter.finals.get(stream_id, 0))
        for stage in state.stages:
            if isinstance(stage, CaptionStage):
                final += state.final_latency.values()
                split_final += state.split_final_latency.values()
                ready += stage.final_ready_latency.values()
                partial += stage.partial_latency.values()
                skipped["caption_steps_merged"] += stage.merged_steps
            elif isinstance(stage, SpeakerStage):
                skipped["speaker_steps"] += stage.skipped_steps
                superseded += state.superseded_steps
                skipped["speaker_steps_widened"] += stage.widened_steps
            elif isinstance(stage, KeywordStage):
                skipped["keyword_windows"] += stage.skipped
    stats = engine.worker.stats
    audio_s = sum(s.audio_samples for s in engine.streams.values()) / SAMPLE_RATE
    cpu_s = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    p95 = _pct(final, 95)
    split_p95 = _pct(split_final, 95)
    # A split is decided up to split_search_s after its split point (engine/vad.py): its
    # final gets that much more than the bar, not a free pass.
    split_bar = FINAL_P95_TARGET_S + config.vad.split_search_s
    result: dict[str, Any] = {
        "streams": n,
        "audio_s_per_stream": round(audio_s / max(n, 1), 1),
        "wall_s": round(wall, 1),
        "final_latency_p50_s": _pct(final, 50),
        "final_latency_p95_s": p95,
        "final_ready_latency_p50_s": _pct(ready, 50),
        "final_ready_latency_p95_s": _pct(ready, 95),
        "split_final_latency_p50_s": _pct(split_final, 50),
        "split_final_latency_p95_s": split_p95,
        "finals": len(final),
        "split_finals": len(split_final),
        # Not skipped: steps in flight cancelled at a segment's end, its last pass covers them.
        "speaker_steps_superseded": superseded,
        "partial_latency_p50_s": _pct(partial, 50),
        "partial_latency_p95_s": _pct(partial, 95),
        "segments": segments,
        "finals_missing": missing_finals,
        "skipped": skipped,
        "compute_s_per_stream_s": _r(stats.busy_s / audio_s) if audio_s else None,
        "worker_cpu_s_per_stream_s": _r(stats.cpu_s / audio_s) if audio_s else None,
        "batches": stats.batches,
        "mean_batch": _r(stats.windows / stats.batches, 2) if stats.batches else None,
        "batch_sizes": dict(sorted(stats.batch_sizes.items())),
        "pad_fraction": _r(stats.padded_samples / stats.samples, 3) if stats.samples else None,
        "cpu_cores_used": round(cpu_s / wall, 2),
        "event_loop_busy": round(loop_cpu / wall, 3),
        "event_loop_lag_p99_ms": lags.percentile(99),
        "rss_mb": round(rss_mb(), 1),
    }
    missed = missed_reasons(final_p95=p95, split_p95=split_p95, split_bar=split_bar,
                            missing_finals=missing_finals,
                            merged_steps=skipped["caption_steps_merged"])
    result["kept_up"] = not missed
    result["missed"] = missed
    if not segments:
        result["note"] = ("no speech segment ended in this run, so it measured nothing: "
                          "give more --seconds (the default conversation's first speech "
                          "starts after about 7 s)")
    if device.type == "cuda":
        result["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        try:
            result["gpu_utilization_pct"] = torch.cuda.utilization(device)
        except (ModuleNotFoundError, RuntimeError) as exc:  # needs pynvml
            result["gpu_utilization_pct"] = f"unavailable ({exc})"
    return result


def missed_reasons(*, final_p95: float | None, split_p95: float | None, split_bar: float,
                   missing_finals: int, merged_steps: int) -> list[str]:
    """Why a run did not keep up, one short reason each; empty when it kept up."""
    missed: list[str] = []
    if final_p95 is None:
        missed.append("no final after a pause")
    elif final_p95 >= FINAL_P95_TARGET_S:
        missed.append(f"final p95 {final_p95:.2f} s >= {FINAL_P95_TARGET_S} s")
    if split_p95 is not None and split_p95 >= split_bar:
        missed.append(f"split final p95 {split_p95:.2f} s >= {split_bar:g} s")
    if merged_steps:
        missed.append(f"{merged_steps} caption step{'s' * (merged_steps != 1)} merged")
    if missing_finals:
        missed.append(f"{missing_finals} final{'s' * (missing_finals != 1)} missing")
    return missed


def find_capacity(trial: Any, *, start: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """Largest N for which trial(N)["kept_up"] (0 if even `start` fails); all runs."""
    runs: list[dict[str, Any]] = []

    def ok(n: int) -> bool:
        runs.append(trial(n))
        return bool(runs[-1]["kept_up"])

    good, n = 0, max(1, start)
    while n <= limit and ok(n):
        good, n = n, n * 2
    bad = min(n, limit + 1)
    while bad - good > 1 and good > 0:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good, runs


def bench_streams(*, streams: int | Sequence[int], find: bool, tasks: Sequence[str], model: str,
                  seconds: float, audio: Path | None, device_type: str, dtype: str,
                  precision: str, max_batch: int = 64, max_streams: int = 512,
                  inference_threads: int = 0, vad_engine: VadEngine = "both", vad_threads: int = 0,
                  verbose: bool = False, models: ModelLoader | None = None) -> dict[str, Any]:
    """`models`: ready models (tests pass tiny ones); default: `model` and the random base
    speaker and keyword architectures."""
    counts = [streams] if isinstance(streams, int) else list(streams)
    if not counts or not all(1 <= n <= MAX_STREAMS for n in (*counts, max_streams)):
        raise ConfigError(f"--streams and --max-streams must be 1 to {MAX_STREAMS}")
    if not 1 <= seconds <= 3600:
        raise ConfigError(f"--seconds must be between 1 and 3600, got {seconds:g}")
    speech = audio if audio is not None else default_audio()
    samples = bench_audio(speech, seconds)
    device = resolve_device(device_type)
    if verbose:
        print(f"loading {model} ({', '.join(tasks)}) ...", file=sys.stderr, flush=True)
    if models is None:
        models = load_models(model=model, tasks=tasks, device_type=device_type, dtype=dtype,
                             precision=precision)
    warm_up(models)
    config = HarkenConfig(
        refine=RefineConfig(model="none"),
        compute=ComputeConfig(device_type=device_type, dtype=dtype, precision=precision,
                              max_batch=max_batch, inference_threads=inference_threads),
        captions=CaptionsConfig(model=model),
        speakers=SpeakersConfig(enabled="speakers" in tasks),
        keywords=KeywordsConfig(enabled="keywords" in tasks),
        vad=VadConfig(engine=vad_engine, threads=vad_threads))
    with tempfile.TemporaryDirectory() as store:
        if "speakers" in tasks:  # no enrolled voiceprints: a fresh, empty store
            config = config.model_copy(update={"speakers": config.speakers.model_copy(
                update={"store": Path(store) / "voiceprints.sqlite"})})

        def trial(n: int) -> dict[str, Any]:
            if verbose:
                print(f"{n} stream(s), {seconds:g} s each, real time ...", file=sys.stderr,
                      flush=True)
            result = run_streams(n, models=models, tasks=tasks, samples=samples, config=config)
            # Each run's figures as it ends: a long sweep or search that is stopped keeps them.
            print(json.dumps(result), file=sys.stderr, flush=True)
            return result

        if find:
            capacity, runs = find_capacity(trial, start=counts[0], limit=max_streams)
        else:
            capacity, runs = -1, [trial(n) for n in counts]
    captioner = models.captioner
    result: dict[str, Any] = {
        "model": captioner.model_id if captioner else model,
        "tasks": list(tasks),
        "audio": str(speech) if speech is not None else "assets/sample.wav",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(captioner.dtype).replace("torch.", "") if captioner else dtype,
        "precision": precision_of(captioner.model) if captioner else precision,
        "weights": "random (full-size architectures: speed holds, outputs do not)"
        if model in RANDOM_CTC_ARCHS else "checkpoint",
        "cores": available_cores(),
        "inference_threads": thread_budget(config, device_type=device.type).inference,
        "max_batch": max_batch,
        "vad_engine": vad_engine,
        "vad_threads": vad_threads,
        "final_p95_target_s": FINAL_P95_TARGET_S,
        "runs": runs,
    }
    if find:
        result["capacity"] = capacity
    return result
