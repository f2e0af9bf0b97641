"""Tiny random UniSpeech-SAT speaker models, saved like hub checkpoints, and test voices.

Like tests/tiny_models.py: real architectures (UniSpeechSatForXVector,
UniSpeechSatForAudioFrameClassification) from small configs with the real conv geometry and
a real Wav2Vec2FeatureExtractor, saved with save_pretrained and loaded through the
production path. The configs keep the published checkpoints' layout: group-norm feature
encoder (no attention mask, like the base-plus checkpoints), weighted layer sum, x-vector
TDNN with the default kernels and dilations, two local speaker slots for segmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tiny_models import CONV_DIM, CONV_KERNEL, CONV_STRIDE
from transformers import (
    UniSpeechSatConfig,
    UniSpeechSatForAudioFrameClassification,
    UniSpeechSatForXVector,
)

from harken.models.audio import SAMPLE_RATE, feature_extractor

SEED = 4321
SEGMENTATION_SLOT_BIAS = (2.0, 0.0)  # logit bias per local slot, see build_tiny_segmenter


def _config(**extra: Any) -> UniSpeechSatConfig:
    return UniSpeechSatConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=CONV_DIM, conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="group", use_weighted_layer_sum=True, initializer_range=0.1,
        # UniSpeech-SAT's quantizer (pre-training only) asserts codevector_dim divides
        # into the groups; keep it small too.
        codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8,
        **extra,
    )


def _save_extractor(folder: Path) -> None:
    feature_extractor(layer_norm=False).save_pretrained(folder)


def build_tiny_xvector(folder: Path) -> Path:
    """A tiny random UniSpeechSatForXVector checkpoint (16-dim embeddings)."""
    config = _config(tdnn_dim=(32, 32, 32, 32, 64), xvector_output_dim=16, num_labels=4)
    torch.manual_seed(SEED)
    model = UniSpeechSatForXVector(config).eval()
    model.save_pretrained(folder)
    _save_extractor(folder)
    return folder


def build_tiny_segmenter(folder: Path) -> Path:
    """A tiny random UniSpeechSatForAudioFrameClassification checkpoint, two local slots.

    Random logits hover around 0 (activity ~0.5, below the 0.6 activity threshold): the
    classifier bias of slot 0 is raised so that slot 0 reads as active and slot 1 varies,
    which makes the tiny model produce turns through the real code path.
    """
    config = _config(num_labels=2)
    torch.manual_seed(SEED + 1)
    model = UniSpeechSatForAudioFrameClassification(config).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor(SEGMENTATION_SLOT_BIAS))
    model.save_pretrained(folder)
    _save_extractor(folder)
    return folder


def voice(seconds: float, *, pitch_hz: float, seed: int = 0, amplitude: float = 0.3,
          syllable_hz: float = 4.0) -> np.ndarray:
    """Deterministic voiced audio at `pitch_hz`: harmonics under a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch = pitch_hz * (1 + 0.03 * np.sin(2 * np.pi * 0.5 * t + rng.uniform(0, np.pi)))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.4 + 0.6 * np.clip(np.sin(2 * np.pi * syllable_hz * t), 0, None)
    noise = 0.01 * rng.standard_normal(n)
    return (amplitude * envelope * harmonics / 2 + noise).astype(np.float32)


def espeak_voice(text: str, espeak_voice_name: str, workdir: Path, name: str) -> np.ndarray:
    """`text` said by an espeak-ng voice (e.g. "en-us", "en-gb+f3"), 16 kHz float32, trimmed."""
    import subprocess

    import soundfile as sf
    import soxr

    wav = workdir / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", espeak_voice_name, "-w", str(wav), text], check=True,
                   timeout=60)
    data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    audio = np.asarray(soxr.resample(data.mean(axis=1), rate, SAMPLE_RATE), dtype=np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0]:loud[-1] + 1].copy()
