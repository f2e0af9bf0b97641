"""GPU micro-measurements for docs/gpu.md (run by scripts/gpu_measure.sh on a CUDA machine).

Full-size architectures with random weights: the compute is that of the trained checkpoints,
the outputs are not (so the refiner is forced to emit a realistic number of tokens).

1. `encode`: HuBERT-large caption windows (3 s: 2 s left context, 0.5 s hop, 0.5 s right
   context) through CtcCaptioner.encode, the call the inference worker makes, per dtype and
   batch size; and the bare forward pass replayed from a CUDA graph against eager.
2. `refine`: SpeechRefiner.refine (feature extraction, generate, decode) on real speech
   segments with a full-size Whisper base and a large-v3-turbo-shaped model, forced to
   REFINE_TOKENS_PER_S tokens per second of speech.

Prints one JSON object per line; timing with CUDA events after warm-up, medians.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from harken.app.bench.architectures import random_ctc
from harken.models.audio import SAMPLE_RATE
from harken.models.refine import SpeechRefiner

WINDOW_S = 3.0  # s: left context 2 + hop 0.5 + right context 0.5 (CaptionsConfig defaults)
BATCHES = (1, 8, 32, 64)
REFINE_TOKENS_PER_S = 4.0  # English speech is ~3.3 Whisper tokens/s (2.5 words/s x 1.3)
SEGMENTS_S = (3.0, 6.0, 12.0, 20.0)
DTYPES = ("float32", "float16", "bfloat16")
TURBO = {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 4,
         "encoder_attention_heads": 20, "decoder_attention_heads": 20,
         "encoder_ffn_dim": 5120, "decoder_ffn_dim": 5120, "num_mel_bins": 128}
REFINERS: tuple[tuple[str, dict[str, int]], ...] = (
    ("whisper-base", {}), ("whisper-large-v3-turbo-shape", TURBO))


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def cuda_ms(fn: Any, *, warmup: int = 3, repeat: int = 10) -> float:
    if DEVICE != "cuda":  # a CPU dry run of this script
        return wall_ms(fn, warmup=1, repeat=2)[0]
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def wall_ms(fn: Any, *, warmup: int = 2, repeat: int = 5) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def encode(speech: np.ndarray) -> None:
    n = round(WINDOW_S * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        captioner = random_ctc("hubert-large", device=DEVICE, dtype=dtype)
        for batch in BATCHES:
            starts = rng.integers(0, len(speech) - n, size=batch)
            windows = [speech[s:s + n].copy() for s in starts]
            ms = cuda_ms(lambda w=windows, c=captioner: c.encode(w))
            emit({"bench": "encode", "model": "hubert-large", "dtype": dtype, "batch": batch,
                  "window_s": WINDOW_S, "ms_per_batch": round(ms, 2),
                  "windows_per_s": round(batch / ms * 1000, 1),
                  # a live stream needs one window per hop (0.5 s): 2 windows/s
                  "streams_bound": round(batch / ms * 1000 / 2)})
        if dtype == "float16":
            graphs(captioner, speech, n)
        del captioner
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def graphs(captioner: Any, speech: np.ndarray, n: int) -> None:
    """The bare forward pass, eager vs replayed from a CUDA graph (fixed shape)."""
    model = captioner.model
    for batch in (1, 16, 64):
        static = torch.from_numpy(np.stack([speech[:n]] * batch)).to("cuda", torch.float16)
        with torch.inference_mode():
            eager = cuda_ms(lambda s=static: model(s).logits)
            try:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        model(static)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = model(static).logits
                replay = cuda_ms(graph.replay)
                same = bool(torch.allclose(out, model(static).logits, atol=1e-2, rtol=1e-2))
                emit({"bench": "cuda_graph", "model": "hubert-large", "dtype": "float16",
                      "batch": batch, "eager_ms": round(eager, 2),
                      "graph_ms": round(replay, 2), "same_output": same})
            except RuntimeError as exc:
                emit({"bench": "cuda_graph", "batch": batch, "eager_ms": round(eager, 2),
                      "error": str(exc)[:300]})


def refine(speech: np.ndarray, whisper_files: Path, work: Path) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    for name, extra in REFINERS:
        config = WhisperConfig.from_pretrained(whisper_files)
        for key, value in extra.items():
            setattr(config, key, value)
        folder = work / name
        torch.manual_seed(0)
        WhisperForConditionalGeneration(config).save_pretrained(folder)
        # the real generation config (language tokens) and processor; the model's own config
        for part in whisper_files.iterdir():
            if part.name != "config.json":
                shutil.copy(part, folder / part.name)
        if "num_mel_bins" in extra:  # the feature extractor must make as many mel bins
            pre = folder / "processor_config.json"
            spec = json.loads(pre.read_text())
            fe = spec.get("feature_extractor", spec)
            fe["feature_size"] = extra["num_mel_bins"]
            pre.write_text(json.dumps(spec))
        refiner = SpeechRefiner.from_pretrained(
            str(folder), device=DEVICE, dtype="float16" if DEVICE == "cuda" else "float32")
        for seconds in SEGMENTS_S:
            segment = speech[: round(seconds * SAMPLE_RATE)]
            tokens = math.ceil(REFINE_TOKENS_PER_S * seconds)
            refiner.max_new_tokens = tokens
            # random weights would stop anywhere: force the token count
            refiner.model.generation_config.min_new_tokens = tokens
            median, worst = wall_ms(lambda s=segment, r=refiner: r.refine(s))
            emit({"bench": "refine", "model": name, "dtype": str(refiner.dtype),
                  "params_m": round(sum(p.numel() for p in refiner.model.parameters()) / 1e6),
                  "segment_s": seconds, "tokens": tokens, "latency_ms_p50": round(median, 1),
                  "latency_ms_max": round(worst, 1)})
        del refiner
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["encode", "refine"])
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--whisper-files", type=Path, help="config/processor of Whisper base")
    parser.add_argument("--work", type=Path, default=Path("/tmp/harken-gpu"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, small sizes: checks the "
                        "script before it spends device time")
    args = parser.parse_args()
    if args.dry_run:
        global DEVICE, BATCHES, SEGMENTS_S, DTYPES, REFINERS
        DEVICE, BATCHES, SEGMENTS_S = "cpu", (1, 2), (3.0,)
        DTYPES, REFINERS = ("float32",), REFINERS[:1]
    speech, rate = sf.read(str(args.audio), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        print(f"{args.audio}: need {SAMPLE_RATE} Hz", file=sys.stderr)
        return 2
    mono = np.ascontiguousarray(speech.mean(axis=1))
    emit({"torch": torch.__version__, "cuda": torch.version.cuda,
          "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"})
    if args.part == "encode":
        encode(mono)
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        refine(mono, args.whisper_files, args.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
