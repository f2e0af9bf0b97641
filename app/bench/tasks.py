"""`harken bench keywords` and `harken bench translation`.

keywords: the real engine (file source unpaced, VAD, keyword stage, worker) over speech, for
the windows scored per second of model time against the windows real time needs (speed vs
real time = audio seconds / model seconds), the batch sizes the worker formed, and raw
throughput of equal-length window batches (1 and --batch windows per forward pass).

translation: every VAD segment of the speech translated once into each --translate language;
latency per segment (p50/p95), real-time factor (generation time / segment audio) and tokens
per second.

Both default to the full-size architecture of the default checkpoint with random weights
(app/bench/architectures.py): speed figures hold for the real checkpoints, outputs do not.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from harken.app.bench.architectures import random_spotter, random_translator
from harken.app.bench.captions import (
    EventCounter,
    _segments,
    _sync,
    bench_audio,
    bench_stream,
)
from harken.app.config import HarkenConfig, KeywordsConfig, RefineConfig
from harken.app.tasks.keywords import keyword_stages
from harken.engine.events import Keyword
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.sources.file import FileSource
from harken.engine.stages.keywords import KeywordStage
from harken.engine.vad import VadOptions
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.keywords import KeywordSpotter
from harken.models.translation import GenerationOptions, SpeechTranslator

RANDOM_KEYWORD_ARCH = "sew-d-mid"
RANDOM_TRANSLATION_ARCH = "xls-r-300m-en-to-15"
WARMUP_CALLS = 2


def _log(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr, flush=True)


def _device_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(dtype).replace("torch.", ""),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


async def _keyword_engine(spotter: KeywordSpotter, path: Path, config: HarkenConfig,
                          max_batch: int) -> dict[str, Any]:
    sink = EventCounter(kind=Keyword)
    async with InferenceWorker(name=str(spotter.device), max_batch=max_batch) as worker:
        engine = Engine(sources=[FileSource(path=path, stream_id="bench", realtime=False)],
                        worker=worker, stages=[keyword_stages(config, spotter)],
                        options=EngineOptions(live=False, levels=False))
        sub = engine.subscribe(sink.name)
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sink.consume(sub))
            await engine.run()
        wall = time.perf_counter() - started
    state, stage, audio_s = bench_stream(engine, KeywordStage)
    busy = worker.stats.busy_s
    return {
        "windows_scored": stage.scored,
        "windows_per_audio_s": round(stage.scored / audio_s, 3),
        "windows_per_model_s": round(stage.scored / busy, 2) if busy else None,
        "speed_vs_realtime": round(audio_s / busy, 2) if busy else None,
        "rtf": round(busy / audio_s, 4),
        "wall_s": round(wall, 2),
        "segments": state.segments,
        "hits": sink.count,
        "batch_sizes": dict(sorted(worker.stats.batch_sizes.items())),
    }


def _raw_throughput(spotter: KeywordSpotter, audio: np.ndarray, window: int,
                    batch: int, repeats: int) -> float:
    windows = [audio[i * window // 2: i * window // 2 + window] for i in range(batch)]
    windows = [w for w in windows if len(w) == window] or [np.zeros(window, np.float32)]
    _sync(spotter.device)
    started = time.perf_counter()
    for _ in range(repeats):
        spotter.encode(windows)
    _sync(spotter.device)
    return round(len(windows) * repeats / (time.perf_counter() - started), 2)


def bench_keywords(*, model: str, seconds: float, audio: Path | None, device_type: str,
                   dtype: str, hop_s: float, batch: int, repeats: int,
                   verbose: bool) -> dict[str, Any]:
    _log(verbose, f"loading {model} ...")
    spotter = (random_spotter(device=device_type, dtype=dtype) if model == RANDOM_KEYWORD_ARCH
               else KeywordSpotter.from_pretrained(model, device=device_type, dtype=dtype))
    samples = bench_audio(audio, seconds)
    config = HarkenConfig(refine=RefineConfig(model="none"),
                          keywords=KeywordsConfig(enabled=True, hop_s=hop_s))
    window = round(config.keywords.window_s * SAMPLE_RATE)
    for _ in range(WARMUP_CALLS):  # CUDA context, kernel selection, allocator growth
        spotter.encode([samples[:window]])
    _log(verbose, "raw throughput ...")
    raw = {"batch_1": _raw_throughput(spotter, samples, window, 1, repeats),
           f"batch_{batch}": _raw_throughput(spotter, samples, window, batch, repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "bench.wav"
        sf.write(str(wav), samples, SAMPLE_RATE, subtype="FLOAT")
        _log(verbose, f"engine: {seconds:.0f} s of speech, unpaced ...")
        engine = asyncio.run(_keyword_engine(spotter, wav, config, batch))
    return {
        "task": "keywords", "model": spotter.model_id, **_device_info(spotter.device,
                                                                       spotter.dtype),
        "audio_s": round(len(samples) / SAMPLE_RATE, 2), "window_s": config.keywords.window_s,
        "hop_s": hop_s, "realtime_windows_per_s": round(1 / hop_s, 2),
        "engine": engine, "raw_windows_per_s": raw,
    }


def bench_translation(*, model: str, seconds: float, audio: Path | None, device_type: str,
                      dtype: str, languages: Sequence[str], num_beams: int,
                      max_new_tokens: int, max_segments: int,
                      verbose: bool) -> dict[str, Any]:
    _log(verbose, f"loading {model} ...")
    translator = (random_translator(device=device_type, dtype=dtype)
                  if model == RANDOM_TRANSLATION_ARCH
                  else SpeechTranslator.from_pretrained(model, device=device_type, dtype=dtype))
    translator.options = GenerationOptions(num_beams=num_beams, max_new_tokens=max_new_tokens)
    targets = translator.languages(languages)
    samples = bench_audio(audio, seconds)
    segments = _segments(samples, VadOptions())[:max_segments]
    if not segments:
        segments = [samples[: 5 * SAMPLE_RATE]]
    _log(verbose, "warm-up ...")
    translator.translate(segments[0][: 2 * SAMPLE_RATE], targets)
    latencies: list[float] = []
    tokens = 0
    for i, seg in enumerate(segments):
        _log(verbose, f"segment {i + 1}/{len(segments)}: {len(seg) / SAMPLE_RATE:.1f} s")
        _sync(translator.device)
        started = time.perf_counter()
        results = translator.translate(seg, targets)
        _sync(translator.device)
        latencies.append(time.perf_counter() - started)
        tokens += sum(len(r.token_ids) for r in results)
    audio_s = sum(len(s) for s in segments) / SAMPLE_RATE
    busy = sum(latencies)
    result: dict[str, Any] = {
        "task": "translation", "model": translator.model_id,
        **_device_info(translator.device, translator.dtype),
        "languages": [t.code for t in targets], "num_beams": num_beams,
        "max_new_tokens": max_new_tokens, "segments": len(segments),
        "segment_audio_s": round(audio_s, 2),
        "latency_p50_s": _pct(latencies, 50), "latency_p95_s": _pct(latencies, 95),
        "rtf": round(busy / audio_s, 4) if audio_s else None,
        "tokens": tokens, "tokens_per_s": round(tokens / busy, 2) if busy else None,
    }
    if translator.device.type == "cuda":
        result["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result
