"""The GPU path: device choice, half precision, batching with padding. Skips without CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import speechlike_audio

from harken.app.bench.compare import argmax_agreement, encode_whole
from harken.models.captions import CtcCaptioner
from harken.models.loading import resolve_device, resolve_dtype
from harken.models.streaming import StreamingCtc, StreamingOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_picks_cuda_and_half_precision() -> None:
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_dtype(device, "auto") == torch.float16
    assert resolve_dtype(device, "bfloat16") == torch.bfloat16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_matches_float32_on_cpu(tiny_ctc_dirs: dict[str, Path], dtype: str) -> None:
    folder = str(tiny_ctc_dirs["hubert"])
    gpu = CtcCaptioner.from_pretrained(folder, device="cuda", dtype=dtype)
    cpu = CtcCaptioner.from_pretrained(folder, device="cpu", dtype="float32")
    assert next(gpu.model.parameters()).is_cuda
    audio = speechlike_audio(4.0, seed=3)
    a, b = encode_whole(gpu, audio), encode_whole(cpu, audio)
    assert a.dtype == np.float32
    assert a.shape == b.shape
    assert argmax_agreement(a, b) > 0.95
    assert float(np.mean(np.abs(a - b))) < 0.05


def test_padded_batch_on_gpu_equals_one_by_one(tiny_ctc_dirs: dict[str, Path]) -> None:
    cap = CtcCaptioner.from_pretrained(str(tiny_ctc_dirs["hubert"]), device="cuda",
                                       dtype="float32")
    assert cap.batchable
    windows = [speechlike_audio(s, seed=i) for i, s in enumerate((1.3, 2.9, 2.0))]
    batched = cap.encode(windows)
    for w, got in zip(windows, batched, strict=True):
        np.testing.assert_allclose(got, cap.encode([w])[0], atol=2e-3)


def test_streaming_bookkeeping_exact_on_gpu(tiny_ctc_dirs: dict[str, Path]) -> None:
    cap = CtcCaptioner.from_pretrained(str(tiny_ctc_dirs["hubert"]), device="cuda",
                                       dtype="float32")
    audio = speechlike_audio(5.0, seed=7)
    state = StreamingCtc(geometry=cap.geometry, normalize=cap.normalize,
                         options=StreamingOptions(left_context_s=6.0, right_context_s=6.0))
    for start in range(0, len(audio), 4000):
        state.push(audio[start:start + 4000])
        while (w := state.next_window()) is not None:
            state.accept(w, cap.encode([w.samples])[0])
    final = state.final_window()
    if final is not None:
        state.accept(final, cap.encode([final.samples])[0])
    np.testing.assert_allclose(state.logprobs(), encode_whole(cap, audio), atol=1e-3)
