"""The audio every task model takes: 16 kHz mono float32, and the feature extractor that
prepares it for the speech encoders."""

from __future__ import annotations

from typing import Any

SAMPLE_RATE = 16_000  # Hz: every model and the stream clock use 16 kHz mono float32


def feature_extractor(*, layer_norm: bool) -> Any:
    """The 16 kHz Wav2Vec2 feature extractor of the speech encoders Harken runs (for models
    built from a config, e.g. random benchmark models and tiny test models). `layer_norm`:
    the model's feature encoder is layer-normed, so it takes an attention mask."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE,
                                    padding_value=0.0, do_normalize=True,
                                    return_attention_mask=layer_norm)
