"""A speaker encoder with trained weights from pip (Resemblyzer) behind the speaker stage's
`Embedder` protocol (engine/stages/speakers.py). Dev-only: measurements and tests.

Resemblyzer's VoiceEncoder (a 3-layer LSTM d-vector model, GE2E-trained, MIT; its weights
ship inside the wheel) embeds 1.6 s "partials" of 40-band mel frames. `encode` slides a
partial every `PARTIAL_HOP_S` over a window: each partial is one feature frame, and the
geometry says where: frame j covers samples [j * hop, j * hop + 1.6 s), so the stage's
weight mapping (centre of the receptive field) puts its weight at the partial's centre.
`pool` is the weighted mean of the partials' unit embeddings, as Resemblyzer's own
utterance embedding is their plain mean.

Install (`make measure-setup`): `pip install --no-deps resemblyzer` plus librosa. Its
metadata asks for the old `webrtcvad` sdist, which would replace webrtcvad-wheels' module
with one that imports pkg_resources and breaks Harken's VAD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harken.models.clustering import FloatArray, l2_normalize
from harken.models.geometry import FrameGeometry

SAMPLE_RATE = 16_000
MEL_HOP = 160  # samples per mel frame (10 ms), Resemblyzer's hparams
PARTIAL_MEL_FRAMES = 160  # 1.6 s partials, as the model was trained
PARTIAL_HOP_S = 0.2  # one partial (feature frame) every 0.2 s
PARTIAL_HOP = int(PARTIAL_HOP_S * SAMPLE_RATE)
MIN_POOL_WEIGHT = 1e-3  # total weight below which a speaker has no usable embedding
MODEL_ID = "resemblyzer"  # the calibration table's key for this encoder


class ResemblyzerEmbedder:
    """Resemblyzer's VoiceEncoder as an `Embedder` (and `embed` for whole clips)."""

    model_id = MODEL_ID
    tdnn_context = 0
    batchable = False
    dim = 256

    def __init__(self) -> None:
        from resemblyzer import VoiceEncoder

        self._encoder: Any = VoiceEncoder(device="cpu", verbose=False)
        self.geometry = FrameGeometry(frame_samples=PARTIAL_HOP,
                                      receptive_samples=PARTIAL_MEL_FRAMES * MEL_HOP)

    def _mels(self, samples: np.ndarray) -> np.ndarray:
        from resemblyzer import audio

        wav = audio.normalize_volume(np.asarray(samples, dtype=np.float32), -30,
                                     increase_only=True)
        return np.asarray(audio.wav_to_mel_spectrogram(wav), dtype=np.float32)

    def _partials(self, mels: np.ndarray, starts: Sequence[int]) -> np.ndarray:
        import torch

        if not starts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = np.stack([mels[s:s + PARTIAL_MEL_FRAMES] for s in starts])
        with torch.inference_mode():
            out = self._encoder(torch.from_numpy(batch))
        return np.asarray(out.numpy(), dtype=np.float32)

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Unit partial embeddings [partials, 256] per window (none if shorter than 1.6 s)."""
        out = []
        step = PARTIAL_HOP // MEL_HOP
        for window in windows:
            n = self.geometry.num_frames(len(window))
            mels = self._mels(window)
            starts = [j * step for j in range(n) if j * step + PARTIAL_MEL_FRAMES <= len(mels)]
            out.append(self._partials(mels, starts))
        return out

    def pool(self, features: np.ndarray, weights: np.ndarray) -> FloatArray:
        """Weighted mean of the partials per local speaker: [speakers, 256] (NaN: unusable)."""
        x = np.asarray(features, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        out = np.full((w.shape[1], self.dim), np.nan, dtype=np.float32)
        for k in range(w.shape[1]):
            if x.shape[0] == 0 or w[:, k].sum() < MIN_POOL_WEIGHT:
                continue
            out[k] = l2_normalize((w[:, k, None] * x).sum(axis=0))
        return out

    def embed(self, clips: Sequence[np.ndarray]) -> FloatArray:
        """One unit embedding per clip: Resemblyzer's utterance embedding (partials' mean)."""
        from resemblyzer import audio

        rows = []
        for clip in clips:
            wav = audio.normalize_volume(np.asarray(clip, dtype=np.float32), -30,
                                         increase_only=True)
            rows.append(np.asarray(self._encoder.embed_utterance(wav), dtype=np.float32))
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)
