"""Tiny randomly initialised speech models of the real architectures, saved like hub checkpoints.

Weights cannot be downloaded in this workplace, so tests build small models from small configs
(real conv geometry: one frame = 320 samples, receptive field 400 samples) with a real
Wav2Vec2Processor, save them with save_pretrained and load them through the production path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioForCTC,
    HubertConfig,
    HubertForCTC,
    HubertForSequenceClassification,
    HubertModel,
    SEWDConfig,
    SEWDForCTC,
)

from harken.app.bench.architectures import LIBRISPEECH_VOCAB, ctc_processor
from harken.models.audio import SAMPLE_RATE

CTC_ARCHS = ("hubert", "data2vec-audio", "sew-d")

# The conv feature encoder of every default checkpoint: 320 samples per frame (20 ms),
# 400 samples (25 ms) receptive field. Only the channel count is shrunk.
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
CONV_DIM = (16,) * len(CONV_KERNEL)

SEED = 1234


def _vocab() -> dict[str, int]:
    return {token: index for index, token in enumerate(LIBRISPEECH_VOCAB)}


def _common(layer_norm: bool) -> dict[str, Any]:
    vocab = _vocab()
    return {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": CONV_DIM,
        "conv_kernel": CONV_KERNEL,
        "conv_stride": CONV_STRIDE,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "vocab_size": len(vocab),
        "pad_token_id": vocab["<pad>"],
        "bos_token_id": vocab["<s>"],
        "eos_token_id": vocab["</s>"],
        "feat_extract_norm": "layer" if layer_norm else "group",
        # Larger than the default 0.02 so random logits are not flat and greedy decoding
        # produces a variety of tokens.
        "initializer_range": 0.1,
    }


def _config(arch: str) -> tuple[Any, type[Any], bool]:
    """(config, model class, layer-norm feature encoder) for one architecture name."""
    if arch == "hubert":
        # Like facebook/hubert-large-ls960-ft: layer-norm conv stack, stable layer norm.
        common = _common(layer_norm=True)
        return HubertConfig(**common, do_stable_layer_norm=True), HubertForCTC, True
    if arch == "data2vec-audio":
        common = _common(layer_norm=True)
        common.pop("feat_extract_norm")  # data2vec-audio always uses layer norm
        common.update(num_conv_pos_embeddings=3, conv_pos_kernel_size=5)
        return (
            Data2VecAudioConfig(**common),
            Data2VecAudioForCTC,
            True,
        )
    if arch == "sew-d":
        common = _common(layer_norm=False)
        config = SEWDConfig(
            **common, squeeze_factor=2, position_buckets=32, max_position_embeddings=64
        )
        return config, SEWDForCTC, False
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {CTC_ARCHS}")


def save_processor(folder: Path, *, layer_norm: bool) -> None:
    """A real Wav2Vec2Processor (feature extractor + CTC tokenizer, LibriSpeech letters)."""
    ctc_processor(layer_norm=layer_norm).save_pretrained(folder)


def build_tiny_ctc(arch: str, folder: Path) -> Path:
    """Save a tiny random CTC checkpoint of `arch` with its processor into `folder`."""
    config, model_cls, layer_norm = _config(arch)
    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    save_processor(folder, layer_norm=layer_norm)
    return folder


def build_tiny_non_ctc(kind: str, folder: Path) -> Path:
    """A HuBERT checkpoint without a CTC head: `kind` is "base" or "classifier"."""
    common = _common(layer_norm=True)
    common.pop("vocab_size")
    config = HubertConfig(**common, do_stable_layer_norm=True, num_labels=3)
    torch.manual_seed(SEED)
    model: Any
    if kind == "base":
        model = HubertModel(config)
    elif kind == "classifier":
        model = HubertForSequenceClassification(config)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose 'base' or 'classifier'")
    model.save_pretrained(folder)
    save_processor(folder, layer_norm=True)
    return folder


def speechlike_audio(seconds: float, *, seed: int = 0) -> np.ndarray:
    """Deterministic float32 16 kHz audio with syllable-rate envelopes, pitch glides and noise.

    Not speech, but it has the level changes and spectral variety that make encoder outputs
    differ from frame to frame, which is what the streaming comparisons need.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch_hz = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, np.pi))
    phase = 2 * np.pi * np.cumsum(pitch_hz) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0, None) ** 2
    noise = rng.standard_normal(n) * (0.3 + 0.3 * np.sin(2 * np.pi * 1.3 * t) ** 2)
    audio = 0.3 * syllables * voiced + 0.05 * noise
    return audio.astype(np.float32)
