"""Speaker embeddings with an x-vector head (AutoModelForAudioXVector): audio in, vectors out.

Two uses:
- `embed(clips)`: one L2-normalised embedding per clip, exactly the model's own `embeddings`
  output (enrollment, verification, evaluation);
- `encode(windows)` + `pool(features, weights)`: the live diarization path. `encode` returns
  the x-vector head's frame features (the last TDNN layer, before statistics pooling) in ONE
  forward pass per batch of windows; `pool` then does the head's statistics pooling with
  per-frame weights, once per local speaker, and applies the head's projection. With uniform
  weights it gives `embed`'s vector; with overlap-aware weights it gives diart's
  "embedding from the frames where the speaker dominates" without one forward pass per
  speaker.

Works with every transformers x-vector head of the wav2vec2 family (UniSpeech-SAT, WavLM,
Wav2Vec2, Data2VecAudio): they share the projector -> TDNN -> statistics pooling -> linear
layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from harken.models.audio import SAMPLE_RATE
from harken.models.clustering import FloatArray, l2_normalize
from harken.models.errors import UnsupportedModelError
from harken.models.geometry import FrameGeometry, audio_batch, batchable, live_batch
from harken.models.loading import (
    load_part,
    load_pretrained,
    resolve_device,
    resolve_dtype,
)

TASK = "speaker"  # names the --speaker-model flag in loading errors
MIN_POOL_WEIGHT = 1e-3  # total frame weight below which a speaker has no usable embedding
MAX_CLIP_S = 30.0  # longer clips are embedded in pieces and averaged (bounded compute)


def feature_extractor_of(processor: Any) -> Any:
    """The Wav2Vec2FeatureExtractor of a processor (or the processor itself)."""
    return getattr(processor, "feature_extractor", processor)


def load_feature_extractor(model_id: str, *, task: str) -> Any:
    """The checkpoint's feature extractor (speaker checkpoints have no tokenizer)."""
    from transformers import AutoFeatureExtractor

    return load_part(AutoFeatureExtractor, model_id, part="feature extractor", task=task)


class XVectorEmbedder:
    """An x-vector speaker model (UniSpeechSatForXVector and its siblings)."""

    def __init__(self, *, model_id: str, model: Any, processor: Any, device: torch.device,
                 dtype: torch.dtype) -> None:
        tdnn = getattr(model, "tdnn", None)
        head = getattr(model, "feature_extractor", None)
        if tdnn is None or not isinstance(head, torch.nn.Linear):
            raise UnsupportedModelError(
                f"{model_id!r} ({type(model).__name__}) has no x-vector head (TDNN layers and "
                "statistics pooling); choose a *ForXVector speaker checkpoint such as "
                "microsoft/unispeech-sat-base-plus-sv"
            )
        self.model_id = model_id
        self.model = model
        self.feature_extractor = feature_extractor_of(processor)
        self.device = device
        self.dtype = dtype
        config = model.config
        self.geometry = FrameGeometry.from_config(config)
        self.dim = int(config.xvector_output_dim)
        self.batchable = batchable(self.feature_extractor, config)
        # Each TDNN layer (kernel k, dilation d) drops (k - 1) * d frames of context.
        self.tdnn_context = sum((int(k) - 1) * int(d) for k, d in
                                zip(config.tdnn_kernel, config.tdnn_dilation, strict=True))
        self._head_w = head.weight.detach().to("cpu", torch.float64).numpy()
        self._head_b = head.bias.detach().to("cpu", torch.float64).numpy() \
            if head.bias is not None else np.zeros(self._head_w.shape[0])

    @classmethod
    def from_pretrained(cls, model_id: str, *, device: str = "auto",
                        dtype: str = "auto", precision: str = "auto") -> XVectorEmbedder:
        from transformers import AutoModelForAudioXVector

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(torch_device, dtype)
        model = load_pretrained(AutoModelForAudioXVector, model_id, device=torch_device,
                                dtype=torch_dtype, task=TASK, precision=precision)
        processor = load_feature_extractor(model_id, task=TASK)
        return cls(model_id=model_id, model=model, processor=processor, device=torch_device,
                   dtype=torch_dtype)

    def feature_frames(self, n_samples: int) -> int:
        """TDNN frames `encode` yields for a window of `n_samples` (0 if too short)."""
        return max(0, self.geometry.num_frames(n_samples) - self.tdnn_context)

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """TDNN frame features [frames, tdnn_dim] float32 per window, one forward pass.

        Frame j of the output sees encoder frames j .. j + tdnn_context.
        """
        counts = [self.feature_frames(len(w)) for w in windows]
        width = int(self.model.config.tdnn_dim[-1])
        results = [np.zeros((0, width), dtype=np.float32)] * len(windows)
        batch = live_batch(self.feature_extractor, windows, counts, device=self.device,
                           dtype=self.dtype, batched=self.batchable)
        if batch is None:
            return results
        live, values, kwargs = batch
        captured: list[torch.Tensor] = []

        def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            captured.append(output)

        # The head pools inside forward(); its last TDNN output is the per-frame feature.
        hook = self.model.tdnn[-1].register_forward_hook(keep)
        try:
            with torch.inference_mode():
                self.model(values, **kwargs)
        finally:
            hook.remove()
        frames = captured[-1].float().cpu().numpy()
        for row, index in enumerate(live):
            results[index] = np.ascontiguousarray(frames[row, : counts[index]])
        return results

    def pool(self, features: np.ndarray, weights: np.ndarray) -> FloatArray:
        """Weighted statistics pooling + the head's projection: [speakers, dim] embeddings.

        `weights` is [frames, speakers] on the same frames as `features`. The standard
        deviation is the unbiased weighted one, so uniform weights reproduce the model's own
        embedding. A speaker without usable weight (or a window too short) gets a NaN row.
        """
        x = np.asarray(features, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or x.ndim != 2 or w.shape[0] != x.shape[0]:
            raise ValueError(f"features [frames, D] and weights [frames, K] must share frames, "
                             f"got {x.shape} and {w.shape}")
        out = np.full((w.shape[1], self.dim), np.nan, dtype=np.float32)
        for k in range(w.shape[1]):
            wk = w[:, k]
            v1 = wk.sum()
            v2 = float(np.square(wk).sum())
            dof = v1 - v2 / v1 if v1 > 0 else 0.0
            if x.shape[0] < 2 or v1 < MIN_POOL_WEIGHT or dof <= 0:
                continue
            mean = (wk[:, None] * x).sum(axis=0) / v1
            var = (wk[:, None] * np.square(x - mean)).sum(axis=0) / dof
            stats = np.concatenate([mean, np.sqrt(var)])
            out[k] = (self._head_w @ stats + self._head_b).astype(np.float32)
        return out

    def embed(self, clips: Sequence[np.ndarray]) -> FloatArray:
        """L2-normalised embeddings [clips, dim], one forward pass per clip (or per 30 s)."""
        rows: list[FloatArray] = []
        piece = int(MAX_CLIP_S * SAMPLE_RATE)
        for clip in clips:
            samples = np.asarray(clip, dtype=np.float32)
            if self.geometry.num_frames(len(samples)) <= self.tdnn_context + 1:
                raise ValueError(
                    f"a clip of {len(samples) / SAMPLE_RATE:.2f} s is too short for a speaker "
                    "embedding; give at least 1 s of speech"
                )
            parts = [samples[i:i + piece] for i in range(0, len(samples), piece)]
            if len(parts) > 1 and len(parts[-1]) < SAMPLE_RATE:  # fold a short tail in
                parts[-2] = np.concatenate([parts[-2], parts.pop()])
            vectors = []
            for part in parts:
                values, kwargs = audio_batch(self.feature_extractor, [part],
                                             device=self.device, dtype=self.dtype, batched=False)
                with torch.inference_mode():
                    out = self.model(values, **kwargs).embeddings
                vectors.append(l2_normalize(out.float().cpu().numpy()[0]))
            rows.append(l2_normalize(np.mean(vectors, axis=0)))
        width = self.dim
        return np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
