"""How encoder frames map to samples, how windows are normalised, and how they become one
model batch.

Shared by every speech-encoder task (captions, speakers, diarization, keywords). No torch at
import: the engine imports the geometry without loading the model stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harken.models.audio import SAMPLE_RATE

if TYPE_CHECKING:
    import torch

NORM_EPSILON = 1e-7  # added to the variance inside the sqrt, as Wav2Vec2FeatureExtractor does
# Architectures whose output changes with zero padding even with an attention mask:
# data2vec-audio's multi-layer positional conv spreads the padded frames back into the last
# valid frames (measured: differences of several nats), so it must not batch ragged windows.
PADDING_SENSITIVE_MODEL_TYPES = frozenset({"data2vec-audio"})


@dataclass(frozen=True)
class FrameGeometry:
    """How encoder output frames map to input samples (from the conv feature encoder)."""

    frame_samples: int  # hop between output frames, in samples (320 = 20 ms at 16 kHz)
    receptive_samples: int  # samples one output frame sees through the conv stack (400)
    conv_layers: tuple[tuple[int, int], ...] = ()  # (kernel, stride) per conv layer
    align_frames: int = 1  # windows must start on multiples of this many frames (SEW squeeze)

    def __post_init__(self) -> None:
        if self.frame_samples <= 0 or self.receptive_samples <= 0 or self.align_frames <= 0:
            raise ValueError(f"frame geometry sizes must be positive, got {self}")

    @classmethod
    def from_conv(
        cls, kernels: Sequence[int], strides: Sequence[int], *, align_frames: int = 1
    ) -> FrameGeometry:
        if len(kernels) != len(strides) or not kernels:
            raise ValueError(f"conv_kernel {kernels} and conv_stride {strides} do not match")
        frame, receptive = 1, 1
        for kernel, stride in zip(kernels, strides, strict=True):
            receptive += (kernel - 1) * frame
            frame *= stride
        layers = tuple((int(k), int(s)) for k, s in zip(kernels, strides, strict=True))
        return cls(frame, receptive, layers, align_frames)

    @classmethod
    def from_config(cls, config: Any) -> FrameGeometry:
        # SEW/SEW-D average-pool pairs of frames in the encoder: a window that starts on an odd
        # frame would pool different pairs than the whole segment does.
        squeeze = int(getattr(config, "squeeze_factor", 1) or 1)
        return cls.from_conv(config.conv_kernel, config.conv_stride, align_frames=squeeze)

    @property
    def align_samples(self) -> int:
        return self.frame_samples * self.align_frames

    def num_frames(self, n_samples: int) -> int:
        """Frames a forward pass over `n_samples` yields (0 if shorter than the receptive field)."""
        if n_samples < self.receptive_samples:
            return 0
        if not self.conv_layers:
            return (n_samples - self.receptive_samples) // self.frame_samples + 1
        n = n_samples
        for kernel, stride in self.conv_layers:
            n = (n - kernel) // stride + 1
        return n


def normalize_window(samples: np.ndarray, *, mean: float, std: float) -> np.ndarray:
    """Zero-mean unit-variance with GIVEN statistics; std is sqrt(variance + NORM_EPSILON)."""
    return ((samples.astype(np.float64) - mean) / std).astype(np.float32)


def segment_stats(samples: np.ndarray) -> tuple[float, float]:
    """(mean, std) exactly as Wav2Vec2FeatureExtractor normalises one array."""
    x = samples.astype(np.float64)
    return float(x.mean()), normalization_std(float(x.var()))


def normalization_std(variance: float) -> float:
    """The divisor of Wav2Vec2FeatureExtractor's normalisation for a given variance."""
    return float(np.sqrt(variance + NORM_EPSILON))


def batchable(extractor: Any, config: Any) -> bool:
    """Whether windows of different lengths may share one padded forward pass.

    With an attention mask the (layer-norm) feature encoder ignores zero padding; group-norm
    encoders normalise over time, so padding would change every frame. Data2VecAudio has a
    mask but its positional convolutions leak padding into the last frames.
    """
    return (bool(getattr(extractor, "return_attention_mask", False))
            and config.model_type not in PADDING_SENSITIVE_MODEL_TYPES)



def audio_batch(extractor: Any, windows: Sequence[np.ndarray], *, device: torch.device,
                dtype: torch.dtype, batched: bool, normalize: bool = True,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """input_values (and attention_mask where the model takes padding) for a batch.

    `batched`: the model may pad (see `batchable`); `normalize`: let the extractor normalise
    each window (False when the caller already did, with a segment's running statistics).
    """
    lengths = {len(w) for w in windows}
    if len(lengths) > 1 and not batched:
        raise ValueError(
            f"this model's feature encoder normalises over time, so zero padding would change "
            f"its output: batch only windows of equal length (got {sorted(lengths)})"
        )
    inputs = extractor([np.asarray(w, dtype=np.float32) for w in windows],
                       sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt",
                       **({} if normalize else {"do_normalize": False}))
    values = inputs["input_values"].to(device, dtype=dtype)
    kwargs: dict[str, torch.Tensor] = {}
    if batched and "attention_mask" in inputs:
        kwargs["attention_mask"] = inputs["attention_mask"].to(device)
    return values, kwargs


def live_batch(extractor: Any, windows: Sequence[np.ndarray], counts: Sequence[int], *,
               device: torch.device, dtype: torch.dtype, batched: bool,
               ) -> tuple[list[int], torch.Tensor, dict[str, torch.Tensor]] | None:
    """The windows long enough for at least one output frame (`counts`: frames per window)
    as (their indexes, input values, model kwargs) for one forward pass; None if there are
    none (a model must not be run on an empty batch)."""
    live = [i for i, n in enumerate(counts) if n > 0]
    if not live:
        return None
    values, kwargs = audio_batch(extractor, [windows[i] for i in live], device=device,
                                 dtype=dtype, batched=batched)
    return live, values, kwargs
