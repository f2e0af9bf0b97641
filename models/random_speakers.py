"""Full-size UniSpeech-SAT speaker models with random weights, for benchmarks.

Same compute as the published checkpoints (so speed and memory figures hold for them);
meaningless outputs. "base" has the architecture of microsoft/unispeech-sat-base-plus-sv and
-sd (768 wide, 12 layers, group-norm feature encoder); "large" that of the -large checkpoints
(1024 wide, 24 layers, layer-norm feature encoder). Both use the weighted layer sum the
fine-tuned heads use, the default x-vector TDNN (512-dim embeddings) and two local speaker
slots for segmentation.
"""

from __future__ import annotations

from typing import Any

import torch

from harken.models.audio import SAMPLE_RATE
from harken.models.diarization import FrameSegmenter
from harken.models.loading import resolve_device, resolve_dtype
from harken.models.speakers import XVectorEmbedder

RANDOM_SPEAKER_ARCHS = ("base", "large")
SEGMENTATION_SLOTS = 2  # local speakers of microsoft/unispeech-sat-base-plus-sd


def unispeech_sat_config(arch: str, **extra: Any) -> Any:
    from transformers import UniSpeechSatConfig

    if arch == "base":
        return UniSpeechSatConfig(use_weighted_layer_sum=True, **extra)
    if arch == "large":
        return UniSpeechSatConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                  intermediate_size=4096, feat_extract_norm="layer",
                                  do_stable_layer_norm=True, conv_bias=True,
                                  use_weighted_layer_sum=True, **extra)
    raise ValueError(f"unknown architecture {arch!r}; choose from "
                     f"{', '.join(RANDOM_SPEAKER_ARCHS)}")


def _extractor(config: Any) -> Any:
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                    do_normalize=True,
                                    return_attention_mask=config.feat_extract_norm == "layer")


def random_speaker_models(arch: str, *, device: str = "auto", dtype: str = "auto",
                          seed: int = 0) -> tuple[FrameSegmenter, XVectorEmbedder]:
    """(segmenter, embedder) of a full-size architecture with random weights."""
    from transformers import UniSpeechSatForAudioFrameClassification, UniSpeechSatForXVector

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype)
    torch.manual_seed(seed)
    seg_config = unispeech_sat_config(arch, num_labels=SEGMENTATION_SLOTS)
    seg_config._attn_implementation = "sdpa"
    seg: Any = UniSpeechSatForAudioFrameClassification(seg_config)
    seg = seg.to(device=torch_device, dtype=torch_dtype).eval()
    xv_config = unispeech_sat_config(arch)
    xv_config._attn_implementation = "sdpa"
    xv: Any = UniSpeechSatForXVector(xv_config)
    xv = xv.to(device=torch_device, dtype=torch_dtype).eval()
    segmenter = FrameSegmenter(model_id=f"random:unispeech-sat-{arch}-sd", model=seg,
                               processor=_extractor(seg_config), device=torch_device,
                               dtype=torch_dtype)
    embedder = XVectorEmbedder(model_id=f"random:unispeech-sat-{arch}-sv", model=xv,
                               processor=_extractor(xv_config), device=torch_device,
                               dtype=torch_dtype)
    return segmenter, embedder
