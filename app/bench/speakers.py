"""`harken bench speakers`: the live diarization stage with full-size speaker models.

The real engine (file source, VAD, speakers stage, inference worker) runs over M minutes of
speech unpaced and deterministic (every step analysed). Reported: the compute time of one
step (segmentation + embedding forward passes, pooling, clustering) against the step length
(real time holds while `step_compute_p95_s` < `step_s`), the real-time factor, and resident
memory before the audio, after the first stats period and at the end (the buffers are
bounded, so it must not grow with the audio's length).
"""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from harken.app.bench.architectures import RANDOM_SPEAKER_ARCHS, random_speaker_models
from harken.app.bench.captions import bench_audio
from harken.app.config import HarkenConfig, RefineConfig, SpeakersConfig
from harken.app.eval.speakers import diarize_file
from harken.app.tasks.speakers import SpeakerModels, load_speaker_models
from harken.app.tasks.thresholds import model_key
from harken.engine.events import Event, Stats
from harken.engine.stages.speakers import SpeakerStage
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import ConfigError

WARMUP_S = 5.0  # s of audio run through both models before measuring


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), else its peak (getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class _MemorySampler:
    """RSS at each stats event (every 5 s of stream), to see growth over the run."""

    name = "memory"

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            if isinstance(event, Stats):
                self.samples.append(rss_mb())


def _models(architecture: str, *, device_type: str, dtype: str) -> SpeakerModels:
    if architecture in RANDOM_SPEAKER_ARCHS:
        segmenter, embedder = random_speaker_models(architecture, device=device_type,
                                                    dtype=dtype)
        return SpeakerModels(segmenter=segmenter, embedder=embedder)
    speaker, _, diarization = architecture.partition(",")
    if not diarization:
        raise ConfigError("--architecture is base, large or SPEAKER_MODEL,DIARIZATION_MODEL")
    return load_speaker_models(model_key(speaker), model_key(diarization), device_type, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_speakers(*, architecture: str, minutes: float, audio: Path | None,
                   device_type: str, dtype: str, window_s: float, step_s: float,
                   verbose: bool) -> dict[str, Any]:
    if not 0 < minutes <= 600:
        raise ConfigError(f"--minutes must be between 0 and 600, got {minutes}")
    config = HarkenConfig(refine=RefineConfig(model="none"),
                          speakers=SpeakersConfig(enabled=True, window_s=window_s,
                                                  step_s=step_s))
    if verbose:
        print(f"loading {architecture} speaker models ...", file=sys.stderr, flush=True)
    models = _models(architecture, device_type=device_type, dtype=dtype)
    device = models.embedder.device
    samples = bench_audio(audio, minutes * 60)
    warm = samples[: round(min(window_s, WARMUP_S) * SAMPLE_RATE)]
    for _ in range(2):  # kernel selection and allocator growth are not steady-state cost
        models.segmenter.encode([warm])
        models.embedder.encode([warm])
    _sync(device)
    memory = _MemorySampler()
    rss_start = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "bench.wav"
        sf.write(str(wav), samples, SAMPLE_RATE, subtype="FLOAT")
        if verbose:
            print(f"engine: {minutes:g} min of audio, unpaced ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        collect, engine = asyncio.run(diarize_file(config, wav, models, stream_id="bench",
                                                   sinks=[memory]))
        wall = time.perf_counter() - started
    rss_end = rss_mb()
    state = engine.streams["bench"]
    stage = state.stages[0]
    if not isinstance(stage, SpeakerStage):
        raise TypeError("the bench engine's only stage must be the speakers stage")
    audio_s = state.audio_samples / SAMPLE_RATE
    step_p50, step_p95 = stage.step_time.get(50), stage.step_time.get(95)
    result: dict[str, Any] = {
        "architecture": architecture,
        "speaker_model": models.embedder.model_id,
        "diarization_model": models.segmenter.model_id,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(models.embedder.dtype).replace("torch.", ""),
        "cpu_threads": torch.get_num_threads(),
        "audio_s": round(audio_s, 1),
        "window_s": window_s,
        "step_s": step_s,
        "steps": stage.steps,
        "step_compute_p50_s": None if step_p50 is None else round(step_p50, 4),
        "step_compute_p95_s": None if step_p95 is None else round(step_p95, 4),
        "realtime": step_p95 is not None and step_p95 < step_s,
        "rtf": round(engine.worker.stats.busy_s / audio_s, 4) if audio_s else None,
        "wall_s": round(wall, 1),
        "worker_batches": engine.worker.stats.batches,
        "turns": len(collect.turns),
        "speakers": stage.clustering.num_speakers,
        "rss_start_mb": round(rss_start, 1),
        "rss_first_stats_mb": round(memory.samples[0], 1) if memory.samples else None,
        "rss_end_mb": round(rss_end, 1),
        "rss_max_mb": round(float(np.max(memory.samples)), 1) if memory.samples else None,
    }
    if device.type == "cuda":
        result["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result
