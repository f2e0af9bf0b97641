"""`harken bench captions`: the streaming engine against the transformers ASR pipeline.

One run, the same audio and model for both:
- engine: the real engine (file source paced in real time unless --fast, VAD, caption
  scheduler, worker) for RTF, overhead (audio seconds encoded per audio second in) and
  latencies;
- quality: for every VAD segment, the engine's streaming log-probs (deterministic mode) and the
  pipeline's chunked log-probs (chunk = L + hop + R, stride = (L, R)) against one
  whole-segment pass: frame argmax agreement and mean absolute log-prob difference;
- pipeline: the ASR pipeline with chunk_length_s/stride_length_s over the same audio.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
import soxr
import torch

from harken.app.bench.architectures import RANDOM_CTC_ARCHS, random_ctc
from harken.app.bench.compare import (
    argmax_agreement,
    encode_whole,
    mean_abs_logprob_diff,
    pipeline_chunked_logprobs,
)
from harken.app.config import CaptionsConfig, HarkenConfig, RefineConfig
from harken.app.session import Session
from harken.app.tasks.loader import ModelLoader
from harken.engine.events import CaptionFinal, Event
from harken.engine.pipeline import Engine, StreamState
from harken.engine.sources.file import FileSource
from harken.engine.stages.captions import CaptionStage
from harken.engine.vad import VadOptions, clip_segments
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.errors import AudioFileError
from harken.models.streaming import StreamingCtc, StreamingOptions

DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / "assets" / "sample.wav"
MIN_SEGMENT_S = 1.0  # shorter segments are left out of the quality comparison


S = TypeVar("S")

def _log(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr, flush=True)


def bench_audio(path: Path | None, seconds: float) -> np.ndarray:
    """The speech file, resampled to 16 kHz mono and repeated to `seconds`."""
    path = path or DEFAULT_AUDIO
    if not path.is_file():
        raise AudioFileError(f"benchmark audio {path} not found; pass --audio FILE")
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    n = round(seconds * SAMPLE_RATE)
    reps = int(np.ceil(n / len(mono)))
    return np.tile(mono, reps)[:n].astype(np.float32)


def load_bench_model(model: str, *, device_type: str, dtype: str) -> CtcCaptioner:
    if model in RANDOM_CTC_ARCHS:
        return random_ctc(model, device=device_type, dtype=dtype)
    return CtcCaptioner.from_pretrained(model, device=device_type, dtype=dtype)


def _segments(audio: np.ndarray, vad: VadOptions) -> list[np.ndarray]:
    """The clip's VAD segments long enough for the quality comparison."""
    return [seg for _, seg in clip_segments(audio, vad)
            if len(seg) >= MIN_SEGMENT_S * SAMPLE_RATE]


def _stream_segment(captioner: CtcCaptioner, samples: np.ndarray,
                    options: StreamingOptions) -> np.ndarray:
    """The engine's deterministic streaming of one segment, pushed one hop at a time."""
    state = StreamingCtc(geometry=captioner.geometry, options=options,
                         normalize=captioner.normalize)
    hop = options.hop_samples
    for start in range(0, len(samples), hop):
        state.push(samples[start:start + hop])
        while (window := state.next_window(latest=False)) is not None:
            state.accept(window, captioner.encode([window.samples])[0])
    window = state.final_window()
    if window is not None:
        state.accept(window, captioner.encode([window.samples])[0])
    return state.logprobs()


def quality(captioner: CtcCaptioner, segments: list[np.ndarray],
            options: StreamingOptions) -> dict[str, dict[str, float]]:
    chunk_s = options.left_context_s + options.hop_s + options.right_context_s
    stride = (options.left_context_s, options.right_context_s)
    sums = {"engine": [0.0, 0.0], "pipeline": [0.0, 0.0]}
    frames = 0
    for samples in segments:
        whole = encode_whole(captioner, samples)
        streamed = _stream_segment(captioner, samples, options)
        chunked = pipeline_chunked_logprobs(captioner, samples, chunk_length_s=chunk_s,
                                            stride_length_s=stride)
        n = len(whole)
        for name, got in (("engine", streamed), ("pipeline", chunked)):
            sums[name][0] += argmax_agreement(got, whole) * n
            sums[name][1] += mean_abs_logprob_diff(got, whole) * n
        frames += n
    return {name: {"agreement": round(a / max(frames, 1), 4),
                   "logprob_diff": round(d / max(frames, 1), 4)}
            for name, (a, d) in sums.items()}


def _pipeline_speed(captioner: CtcCaptioner, audio: np.ndarray,
                    options: StreamingOptions) -> dict[str, float]:
    from transformers import pipeline

    chunk_s = options.left_context_s + options.hop_s + options.right_context_s
    stride = [options.left_context_s, options.right_context_s]
    asr: Any = pipeline("automatic-speech-recognition", model=captioner.model,
                        feature_extractor=captioner.feature_extractor,
                        tokenizer=captioner.tokenizer, device=captioner.device,
                        dtype=captioner.dtype)
    encoded = sum(len(c["input_values"][0]) if "input_values" in c else 0
                  for c in asr.preprocess(audio, chunk_length_s=chunk_s, stride_length_s=stride))
    _sync(captioner.device)
    started = time.perf_counter()
    asr(audio.copy(), chunk_length_s=chunk_s, stride_length_s=stride)
    _sync(captioner.device)
    elapsed = time.perf_counter() - started
    seconds = len(audio) / SAMPLE_RATE
    return {"rtf": round(elapsed / seconds, 4), "overhead": round(encoded / len(audio), 3)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EventCounter:
    """A sink that counts the events of one type (benchmarks report them)."""

    name = "bench"

    def __init__(self, *, kind: type[Event]) -> None:
        self.kind = kind
        self.count = 0

    async def consume(self, events: Any) -> None:
        async for event in events:
            if isinstance(event, self.kind):
                self.count += 1


async def _run_engine(captioner: CtcCaptioner, path: Path, *, realtime: bool,
                      config: HarkenConfig) -> dict[str, Any]:
    collect = EventCounter(kind=CaptionFinal)
    source = FileSource(path=path, stream_id="bench", realtime=realtime)
    session = Session(config=config, sources=[source], sinks=[collect],
                              live=realtime, models=ModelLoader(captioner=captioner))
    started = time.perf_counter()
    engine = await session.run()
    wall = time.perf_counter() - started
    state, stage, audio_s = bench_stream(engine, CaptionStage)
    return {
        "rtf": round(engine.worker.stats.busy_s / audio_s, 4),
        "wall_s": round(wall, 2),
        "overhead": round(stage.encoded_samples / state.audio_samples, 3),
        **caption_latencies(state, stage),
        "segments": state.segments,
        "finals": collect.count,
        "steps_merged": stage.merged_steps,
        "windows": engine.worker.stats.windows,
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def caption_latencies(state: StreamState, stage: CaptionStage) -> dict[str, float | None]:
    """A stream's partial and final latency percentiles, as every bench reports them: a
    partial when it is published (the caption stage's own figure when none was); the
    final when it is published (what a reader waits for) after a pause; after a VAD split
    (`split_final`: decided up to split_search_s after the split point); and, after a pause,
    when the caption stage had it (`final_ready`: the difference is the other stages
    closing the segment). `finals` and `split_finals`: how many finals they are over."""
    latencies = stage.latencies()
    published = state.partial_latency  # as a reader gets them (held partials wait too)
    return {"partial_latency_p50_s": _r(published.get(50) if len(published)
                                        else latencies["caption_latency_p50_s"]),
            "partial_latency_p95_s": _r(published.get(95) if len(published)
                                        else latencies["caption_latency_p95_s"]),
            "final_latency_p50_s": _r(state.final_latency.get(50)),
            "final_latency_p95_s": _r(state.final_latency.get(95)),
            "final_ready_latency_p50_s": _r(latencies["final_ready_latency_p50_s"]),
            "final_ready_latency_p95_s": _r(latencies["final_ready_latency_p95_s"]),
            "split_final_latency_p50_s": _r(state.split_final_latency.get(50)),
            "split_final_latency_p95_s": _r(state.split_final_latency.get(95)),
            "finals": len(state.final_latency),
            "split_finals": len(state.split_final_latency)}


def bench_stream(engine: Engine, kind: type[S]) -> tuple[StreamState, S, float]:
    """The bench stream's state, its first stage (which must be a `kind`) and its audio in
    seconds, after a bench engine ran."""
    state = engine.streams["bench"]
    stage = state.stages[0]
    if not isinstance(stage, kind):
        raise TypeError(f"the first stage of the bench engine must be a {kind.__name__}")
    return state, stage, state.audio_samples / SAMPLE_RATE


def bench_captions(*, model: str, seconds: float, audio: Path | None, device_type: str,
                   dtype: str, hop_s: float, left_context_s: float, right_context_s: float,
                   verbose: bool, realtime: bool = True) -> dict[str, Any]:
    options = StreamingOptions(hop_s=hop_s, left_context_s=left_context_s,
                               right_context_s=right_context_s)
    config = HarkenConfig(refine=RefineConfig(model="none"),
                          captions=CaptionsConfig(hop_s=hop_s, left_context_s=left_context_s,
                                                  right_context_s=right_context_s))
    _log(verbose, f"loading {model} ...")
    captioner = load_bench_model(model, device_type=device_type, dtype=dtype)
    samples = bench_audio(audio, seconds)
    # Warm-up: CUDA context, kernel selection and allocator growth are not steady-state cost.
    for _ in range(2):
        captioner.encode([samples[: 3 * SAMPLE_RATE]])
    _sync(captioner.device)
    if captioner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(captioner.device)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "bench.wav"
        sf.write(str(wav), samples, SAMPLE_RATE, subtype="FLOAT")
        _log(verbose, f"engine: {seconds:.0f} s of audio, {'real time' if realtime else 'fast'}")
        engine = asyncio.run(_run_engine(captioner, wav, realtime=realtime, config=config))
    _log(verbose, "quality: streaming and pipeline chunking vs whole-segment encoding ...")
    segments = _segments(samples, VadOptions())
    q = quality(captioner, segments, options)
    engine.update(q["engine"])
    _log(verbose, "pipeline speed ...")
    pipe = _pipeline_speed(captioner, samples, options)
    pipe.update(q["pipeline"])
    result: dict[str, Any] = {
        "model": captioner.model_id,
        "device": str(captioner.device),
        "device_name": torch.cuda.get_device_name(captioner.device)
        if captioner.device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(captioner.dtype).replace("torch.", ""),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "audio_s": round(len(samples) / SAMPLE_RATE, 2),
        "quality_segments": len(segments),
        "hop_s": hop_s, "left_context_s": left_context_s, "right_context_s": right_context_s,
        "engine": engine,
        "pipeline": pipe,
    }
    if captioner.device.type == "cuda":
        result["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result
