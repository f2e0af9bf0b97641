"""Reference encodings and agreement metrics for judging streaming captions.

- encode_whole: the whole segment in one forward pass (the quality ceiling for streaming).
- pipeline_chunked_logprobs: the transformers ASR pipeline's own chunking with strides, the
  standard way to run a CTC model over long audio, as a baseline to beat.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from harken.models.captions import CtcCaptioner
from harken.models.geometry import normalize_window, segment_stats

MAX_LENGTH_MISMATCH_FRAMES = 1


def encode_whole(captioner: CtcCaptioner, samples: np.ndarray) -> np.ndarray:
    """Log-probs of the whole segment from one forward pass, normalised over the segment."""
    audio = np.asarray(samples, dtype=np.float32)
    if captioner.normalize:
        mean, std = segment_stats(audio)
        audio = normalize_window(audio, mean=mean, std=std)
    return captioner.encode([audio])[0]


def pipeline_chunked_logprobs(
    captioner: CtcCaptioner,
    samples: np.ndarray,
    *,
    chunk_length_s: float,
    stride_length_s: tuple[float, float],
) -> np.ndarray:
    """Log-probs [frames, vocab] as the ASR pipeline computes them with chunk_length_s/stride.

    Chunking, per-chunk normalisation, the forward pass and the stride rescaling are the
    pipeline's own code (preprocess + forward). Its CTC postprocess keeps only argmax tokens,
    so the stitching of the logits is repeated here exactly as postprocess does it for
    "ctc_with_lm" (items[:, left:total_n - right], then concatenation along time).
    """
    from transformers import pipeline

    asr: Any = pipeline(
        "automatic-speech-recognition",
        model=captioner.model,
        feature_extractor=captioner.feature_extractor,
        tokenizer=captioner.tokenizer,
        device=captioner.device,
    )
    # The "ctc" path of _forward returns argmax tokens; the "ctc_with_lm" path runs the same
    # model call and stride rescaling but returns the logits, which is what we compare.
    asr.type = "ctc_with_lm"
    chunks: Iterable[Mapping[str, Any]] = asr.preprocess(
        np.asarray(samples, dtype=np.float32),
        chunk_length_s=chunk_length_s,
        stride_length_s=list(stride_length_s),
    )
    pieces = []
    for chunk in chunks:
        out = asr.forward(dict(chunk))
        logits = out["logits"]
        items = logits.to(torch.float32).numpy()
        total_n, left, right = out["stride"]
        # As in AutomaticSpeechRecognitionPipeline.postprocess: total_n may exceed the real
        # frame count (rounding of the stride rescaling), so slicing clips at the end.
        right_n = total_n - right
        pieces.append(items[:, left:right_n])
    stitched = torch.from_numpy(np.concatenate(pieces, axis=1)[0])
    return torch.log_softmax(stitched, dim=-1).numpy()


def _common_frames(a: np.ndarray, b: np.ndarray) -> int:
    """Frames both arrays have. The pipeline rounds chunk frame counts (round(n / 320) instead
    of the conv arithmetic), so its stitched output can have one frame more or less at the end
    than a whole-segment pass; that frame is left out. Larger mismatches are bugs."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"log-prob arrays must be [frames, vocab] alike, got {a.shape}, {b.shape}")
    if abs(a.shape[0] - b.shape[0]) > MAX_LENGTH_MISMATCH_FRAMES:
        raise ValueError(
            f"frame counts differ by more than {MAX_LENGTH_MISMATCH_FRAMES}: "
            f"{a.shape[0]} vs {b.shape[0]}"
        )
    n = int(min(a.shape[0], b.shape[0]))
    if n == 0:
        raise ValueError("no frames to compare")
    return n


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of frames whose greedy (argmax) token agrees, over the common frames."""
    n = _common_frames(a, b)
    return float(np.mean(np.argmax(a[:n], axis=-1) == np.argmax(b[:n], axis=-1)))


def mean_abs_logprob_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute log-prob difference (nats) over the common frames and the vocabulary."""
    n = _common_frames(a, b)
    return float(np.mean(np.abs(a[:n].astype(np.float64) - b[:n].astype(np.float64))))
