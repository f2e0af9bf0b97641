"""`harken bench precision`: what --precision int8 costs against fp32, per task, on real speech.

The same full-size architecture is built twice with the same random weights (seed), one copy
quantised through models/loading.py's quantize path, and both run on the recordings of
../shared/audio (or --audio-root). Per task:

- captions (HuBERT base CTC): frame argmax agreement and mean |log-prob difference| over
  whole utterances (captions/);
- speakers (UniSpeech-SAT base x-vector): cosine between the fp32 and int8 embedding of each
  utterance (speakers/), also after removing the mean embedding of all clips (random weights
  give embeddings that are all alike: the centred cosine is the one that can tell);
- diarization (UniSpeech-SAT base frame classification): mean |activity difference| over
  5 s windows of a meeting (diarization/);
- keywords (SEW-D mid): mean and max |posterior difference| and top-1 agreement over the
  Speech Commands clips (keywords/);
- translation (xls-r-300m en-to-15): greedy token agreement (same token at the same position)
  and the shared prefix, per segment (captions/).

Random weights: these measure how far int8 moves each model's output, not accuracy. Speed-ups
are the wall-clock ratio of the same calls, in this process, one after the other.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
import soxr
import torch

from harken.app.bench.architectures import (
    random_ctc,
    random_speaker_models,
    random_spotter,
    random_translator,
)
from harken.app.bench.compare import argmax_agreement, encode_whole, mean_abs_logprob_diff
from harken.app.bench.shared_audio import shared_audio_root
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import AudioFileError, ConfigError
from harken.models.translation import GenerationOptions

TASKS = ("captions", "speakers", "diarization", "keywords", "translation")
DIARIZATION_WINDOW_S = 5.0
DIARIZATION_HOP_S = 0.5
T = TypeVar("T")


def _load(path: str, limit_s: float | None = None) -> np.ndarray:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    out: np.ndarray = mono if limit_s is None else mono[: round(limit_s * SAMPLE_RATE)]
    return out


def _files(root: Path, *patterns: str) -> list[str]:
    found = [p for pattern in patterns for p in sorted(glob.glob(str(root / pattern)))]
    if not found:
        raise AudioFileError(f"no speech under {root} matching {patterns}; pass "
                             "--audio-root pointing at the shared audio folder")
    return found


def _timed(fn: Callable[[Any], T], items: Sequence[Any]) -> tuple[float, list[T]]:
    started = time.perf_counter()
    out = [fn(x) for x in items]
    return time.perf_counter() - started, out


def _speed(fp32_s: float, int8_s: float) -> dict[str, float]:
    return {"fp32_s": round(fp32_s, 2), "int8_s": round(int8_s, 2),
            "speedup": round(fp32_s / int8_s, 2)}


def _captions(root: Path) -> dict[str, Any]:
    clips = [_load(p) for p in _files(root, "captions/jfk.wav",
                                      "captions/librispeech_test_clean_1089/*.flac",
                                      "captions/fleurs_en/*.flac")]
    fp = random_ctc("hubert-base", device="cpu", precision="fp32")
    q = random_ctc("hubert-base", device="cpu", precision="int8")
    for model in (fp, q):
        encode_whole(model, clips[0][:SAMPLE_RATE])  # warm-up
    tf, a = _timed(lambda c: encode_whole(fp, c), clips)
    tq, b = _timed(lambda c: encode_whole(q, c), clips)
    frames = sum(len(x) for x in a)
    return {"clips": len(clips), "audio_s": round(sum(map(len, clips)) / SAMPLE_RATE, 1),
            "argmax_agreement": round(sum(argmax_agreement(y, x) * len(x)
                                          for x, y in zip(a, b, strict=True)) / frames, 4),
            "mean_abs_logprob_diff": round(sum(mean_abs_logprob_diff(y, x) * len(x)
                                               for x, y in zip(a, b, strict=True)) / frames, 4),
            **_speed(tf, tq)}


def _speakers(root: Path) -> dict[str, Any]:
    clips = [_load(p) for p in _files(root, "speakers/librispeech_test_other/*/*.flac")]
    _, fp = random_speaker_models("base", device="cpu", precision="fp32")
    _, q = random_speaker_models("base", device="cpu", precision="int8")
    tf, a = _timed(lambda c: fp.embed([c])[0], clips)
    tq, b = _timed(lambda c: q.embed([c])[0], clips)
    x, y = np.stack(a).astype(np.float64), np.stack(b).astype(np.float64)
    cos = np.sum(x * y, axis=1)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    centred = np.sum(xc * yc, axis=1) / (np.linalg.norm(xc, axis=1) * np.linalg.norm(yc, axis=1))
    return {"clips": len(clips), "cosine_mean": round(float(cos.mean()), 4),
            "cosine_min": round(float(cos.min()), 4),
            "centred_cosine_mean": round(float(centred.mean()), 4),
            "centred_cosine_min": round(float(centred.min()), 4), **_speed(tf, tq)}


def _diarization(root: Path) -> dict[str, Any]:
    audio = _load(_files(root, "diarization/ami_dev00/*.flac")[0])
    win, hop = round(DIARIZATION_WINDOW_S * SAMPLE_RATE), round(DIARIZATION_HOP_S * SAMPLE_RATE)
    windows = [audio[i:i + win] for i in range(0, len(audio) - win + 1, hop)]
    fp, _ = random_speaker_models("base", device="cpu", precision="fp32")
    q, _ = random_speaker_models("base", device="cpu", precision="int8")
    tf, a = _timed(lambda w: fp.encode([w])[0], windows)
    tq, b = _timed(lambda w: q.encode([w])[0], windows)
    diff = [float(np.abs(x - y).mean()) for x, y in zip(a, b, strict=True)]
    return {"windows": len(windows), "window_s": DIARIZATION_WINDOW_S,
            "activity_abs_diff_mean": round(float(np.mean(diff)), 5), **_speed(tf, tq)}


def _keywords(root: Path) -> dict[str, Any]:
    clips = []
    for path in _files(root, "keywords/speech_commands_v2/*/*.wav"):
        x = _load(path)[:SAMPLE_RATE]
        clips.append(np.pad(x, (0, SAMPLE_RATE - len(x))))
    fp = random_spotter(device="cpu", precision="fp32")
    q = random_spotter(device="cpu", precision="int8")
    batches = [clips[i:i + 8] for i in range(0, len(clips), 8)]
    tf, a = _timed(fp.encode, batches)
    tq, b = _timed(q.encode, batches)
    x = np.concatenate([np.stack(r) for r in a])
    y = np.concatenate([np.stack(r) for r in b])
    return {"clips": len(clips),
            "posterior_abs_diff_mean": round(float(np.abs(x - y).mean()), 5),
            "posterior_abs_diff_max": round(float(np.abs(x - y).max()), 4),
            "top1_agreement": round(float(np.mean(x.argmax(1) == y.argmax(1))), 3),
            **_speed(tf, tq)}


def _translation(root: Path, max_new_tokens: int) -> dict[str, Any]:
    clips = [_load(p) for p in _files(root, "captions/jfk.wav")]
    clips += [_load(p) for p in _files(root, "captions/fleurs_en/*.flac")[:2]]
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    fp = random_translator(device="cpu", precision="fp32")
    q = random_translator(device="cpu", precision="int8")
    fp.options = q.options = options
    targets = fp.languages(["de"])
    tf, a = _timed(lambda c: fp.translate(c, targets)[0].token_ids, clips)
    tq, b = _timed(lambda c: q.translate(c, targets)[0].token_ids, clips)
    same = [float(np.mean([s == t for s, t in zip(x, y, strict=False)])) for x, y in zip(a, b,
                                                                                       strict=True)]
    prefix = []
    for x, y in zip(a, b, strict=True):
        n = next((i for i, (s, t) in enumerate(zip(x, y, strict=False)) if s != t),
                 min(len(x), len(y)))
        prefix.append(n / max(len(x), 1))
    return {"segments": len(clips), "audio_s": round(sum(map(len, clips)) / SAMPLE_RATE, 1),
            "max_new_tokens": max_new_tokens,
            "token_agreement": round(float(np.mean(same)), 3),
            "shared_prefix": round(float(np.mean(prefix)), 3), **_speed(tf, tq)}


def bench_precision(*, tasks: Sequence[str], audio_root: Path | None, threads: int,
                    max_new_tokens: int = 24) -> dict[str, Any]:
    """`audio_root`: the shared real-speech folder (None: found by shared_audio_root)."""
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ConfigError(f"unknown task(s) {bad}; choose from {', '.join(TASKS)}")
    if audio_root is None:
        audio_root = shared_audio_root()
        if audio_root is None:
            raise AudioFileError("no shared speech folder found (../shared/audio); pass "
                                 "--audio-root DIR or set HARKEN_SHARED_AUDIO")
    if threads > 0:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {"weights": "random (full-size architectures, same seed for both)",
                           "threads": torch.get_num_threads(), "audio_root": str(audio_root)}
    for task in tasks:
        if task == "captions":
            out[task] = _captions(audio_root)
        elif task == "speakers":
            out[task] = _speakers(audio_root)
        elif task == "diarization":
            out[task] = _diarization(audio_root)
        elif task == "keywords":
            out[task] = _keywords(audio_root)
        else:
            out[task] = _translation(audio_root, max_new_tokens)
    return out
