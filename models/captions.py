"""The CTC captioner: audio windows in, per-frame log-probs out; greedy decoding with word times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harken.models.audio import SAMPLE_RATE
from harken.models.errors import UnsupportedModelError
from harken.models.loading import load_pretrained, load_processor, resolve_device, resolve_dtype

TASK = "captions"
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


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float  # seconds on the caller's clock (start_s + offset in the window)
    end: float


@dataclass(frozen=True)
class Transcript:
    text: str
    words: tuple[TimedWord, ...]


def normalize_window(samples: np.ndarray, *, mean: float, std: float) -> np.ndarray:
    """Zero-mean unit-variance with GIVEN statistics; std is sqrt(variance + NORM_EPSILON)."""
    return ((samples.astype(np.float64) - mean) / std).astype(np.float32)


def segment_stats(samples: np.ndarray) -> tuple[float, float]:
    """(mean, std) exactly as Wav2Vec2FeatureExtractor normalises one array."""
    x = samples.astype(np.float64)
    return float(x.mean()), float(np.sqrt(x.var() + NORM_EPSILON))


def batchable(extractor: Any, config: Any) -> bool:
    """Whether windows of different lengths may share one padded forward pass.

    With an attention mask the (layer-norm) feature encoder ignores zero padding; group-norm
    encoders normalise over time, so padding would change every frame. Data2VecAudio has a
    mask but its positional convolutions leak padding into the last frames.
    """
    return (bool(getattr(extractor, "return_attention_mask", False))
            and config.model_type not in PADDING_SENSITIVE_MODEL_TYPES)


class CtcCaptioner:
    """A CTC speech encoder (HuBERT, Data2VecAudio, SEW-D, ...) with its tokenizer."""

    def __init__(
        self,
        *,
        model_id: str,
        model: Any,
        processor: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        tokenizer = getattr(processor, "tokenizer", None)
        extractor = getattr(processor, "feature_extractor", None)
        if tokenizer is None or extractor is None:
            raise UnsupportedModelError(
                f"{model_id!r} has no CTC tokenizer (vocab.json) next to its feature extractor; "
                "captions need a processor with both (save a Wav2Vec2Processor in the folder)"
            )
        self.model_id = model_id
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.feature_extractor = extractor
        self.device = device
        self.dtype = dtype
        self.geometry = FrameGeometry.from_config(model.config)
        self.batchable = batchable(extractor, model.config)
        self.normalize = bool(getattr(extractor, "do_normalize", True))
        self.vocab_size = int(model.config.vocab_size)
        # Special tokens other than the word delimiter (<s>, </s>, <unk>) are never text: greedy
        # decoding treats them as blanks. Dropping them instead would merge the letters around
        # them ("L </s> L" must stay two letters, like "L <pad> L").
        delimiter = tokenizer.convert_tokens_to_ids(tokenizer.word_delimiter_token)
        self._blank_id = int(tokenizer.pad_token_id)
        self._special_ids = np.array(
            sorted(set(tokenizer.all_special_ids) - {delimiter}), dtype=np.int64
        )

    @classmethod
    def from_pretrained(
        cls, model_id: str, *, device: str = "auto", dtype: str = "auto"
    ) -> CtcCaptioner:
        from transformers import AutoModelForCTC

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(torch_device, dtype)
        processor = load_processor(model_id, task=TASK)
        model = load_pretrained(
            AutoModelForCTC, model_id, device=torch_device, dtype=torch_dtype, task=TASK
        )
        return cls(
            model_id=model_id,
            model=model,
            processor=processor,
            device=torch_device,
            dtype=torch_dtype,
        )

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Log-probs [frames, vocab] float32 per window, from ONE forward pass for the batch.

        Windows are float32 16 kHz mono, already normalised by the caller when self.normalize.
        """
        counts = [self.geometry.num_frames(len(w)) for w in windows]
        empty = np.zeros((0, self.vocab_size), dtype=np.float32)
        live = [i for i, n in enumerate(counts) if n > 0]
        results = [empty] * len(windows)
        if not live:
            return results
        lengths = {len(windows[i]) for i in live}
        if len(lengths) > 1 and not self.batchable:
            raise ValueError(
                f"{self.model_id!r} has a group-norm feature encoder, so zero padding would "
                f"change its output: batch only windows of equal length (got {sorted(lengths)})"
            )
        inputs = self.feature_extractor(
            [np.asarray(windows[i], dtype=np.float32) for i in live],
            sampling_rate=SAMPLE_RATE,
            do_normalize=False,  # the caller normalises with the segment's running statistics
            padding="longest",
            return_tensors="pt",
        )
        values = inputs["input_values"].to(self.device, dtype=self.dtype)
        kwargs: dict[str, torch.Tensor] = {}
        if self.batchable and "attention_mask" in inputs:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        with torch.inference_mode():
            logits = self.model(values, **kwargs).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        for row, index in enumerate(live):
            results[index] = np.ascontiguousarray(logprobs[row, : counts[index]])
        return results

    def decode(self, logprobs: np.ndarray, *, start_s: float) -> Transcript:
        """Greedy CTC: argmax per frame, collapse repeats, drop blanks; words timed in seconds."""
        if logprobs.shape[0] == 0:
            return Transcript(text="", words=())
        ids = np.argmax(logprobs, axis=-1)
        ids[np.isin(ids, self._special_ids)] = self._blank_id
        out = self.tokenizer.decode(ids.tolist(), output_word_offsets=True)
        seconds_per_frame = self.geometry.frame_samples / SAMPLE_RATE
        words = tuple(
            TimedWord(
                word=str(item["word"]),
                start=start_s + int(item["start_offset"]) * seconds_per_frame,
                end=start_s + int(item["end_offset"]) * seconds_per_frame,
            )
            for item in out.word_offsets
        )
        return Transcript(text=str(out.text), words=words)
