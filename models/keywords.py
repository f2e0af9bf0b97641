"""The keyword spotter: 1 s audio windows in, one probability per model label out.

Any AutoModelForAudioClassification checkpoint works (SEW-D, HuBERT, wav2vec2, ...). The
labels come from the checkpoint's config (`id2label`); labels written like `_silence_` or
`_unknown_` (Speech Commands' background classes) are scored but never fire.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from harken.models.audio import SAMPLE_RATE
from harken.models.errors import KeywordError, UnsupportedModelError
from harken.models.loading import (
    check_head,
    load_part,
    load_pretrained,
    resolve_device,
    resolve_dtype,
)
from harken.models.triggers import is_background_label

TASK = "keywords"
_PLACEHOLDER_LABEL = re.compile(r"^LABEL_\d+$")  # what transformers writes when none were given


def model_labels(config: Any) -> tuple[str, ...]:
    """Labels in class-index order, from config.id2label."""
    id2label = getattr(config, "id2label", None) or {}
    num = int(getattr(config, "num_labels", len(id2label)))
    try:
        labels = tuple(str(id2label[i]) for i in range(num))
    except KeyError as error:
        raise UnsupportedModelError(
            f"the keyword model's config maps only classes {sorted(id2label)} of {num} to "
            "labels; its config.json needs an id2label entry for every class"
        ) from error
    if all(_PLACEHOLDER_LABEL.match(label) for label in labels):
        raise UnsupportedModelError(
            "the keyword model has no label names (its id2label is LABEL_0, LABEL_1, ...); "
            "choose a checkpoint fine-tuned for keyword spotting, whose config names its labels"
        )
    return labels


def resolve_keywords(requested: Sequence[str], labels: Sequence[str], *,
                     model_id: str = "the keyword model") -> tuple[str, ...]:
    """The keywords to spot: `requested` checked against the labels; empty means all of them."""
    spottable = tuple(label for label in labels if not is_background_label(label))
    if not spottable:
        raise UnsupportedModelError(
            f"{model_id!r} has only background labels ({', '.join(labels)}); choose a keyword "
            "spotting checkpoint"
        )
    if not requested:
        return spottable
    by_lower = {label.lower(): label for label in spottable}
    chosen: list[str] = []
    for word in requested:
        word = word.strip()
        if word in labels and is_background_label(word):
            raise KeywordError(f"{word!r} is a background class of {model_id!r} and never fires; "
                               f"choose from {', '.join(spottable)}")
        label = word if word in spottable else by_lower.get(word.lower())
        if label is None:
            raise KeywordError(f"{model_id!r} cannot spot {word!r}; its keywords are "
                               f"{', '.join(spottable)} (fix --keywords or keywords.words)")
        if label not in chosen:
            chosen.append(label)
    return tuple(chosen)


class KeywordSpotter:
    """An audio classification model with its feature extractor."""

    def __init__(self, *, model_id: str, model: Any, feature_extractor: Any,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model_id = model_id
        self.model = model
        self.feature_extractor = feature_extractor
        self.device = device
        self.dtype = dtype
        self.labels = model_labels(model.config)
        self.keywords = resolve_keywords((), self.labels, model_id=model_id)
        rate = int(getattr(feature_extractor, "sampling_rate", SAMPLE_RATE))
        if rate != SAMPLE_RATE:
            raise UnsupportedModelError(
                f"{model_id!r} expects {rate} Hz audio; Harken runs every model at "
                f"{SAMPLE_RATE} Hz, so choose a 16 kHz keyword model"
            )
        # Every window has the same length, so equal-length batching is all that is needed
        # (and it is safe for group-norm feature encoders, which padding would disturb).
        self.batchable = False

    @classmethod
    def from_pretrained(cls, model_id: str, *, device: str = "auto",
                        dtype: str = "auto", precision: str = "auto") -> KeywordSpotter:
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(torch_device, dtype)
        # The head first: a checkpoint of another task is named as such, not as a
        # checkpoint with a missing tokenizer.
        check_head(AutoModelForAudioClassification, model_id, task=TASK)
        extractor = load_part(AutoFeatureExtractor, model_id, part="feature extractor",
                              task=TASK)
        model = load_pretrained(AutoModelForAudioClassification, model_id, device=torch_device,
                                dtype=torch_dtype, task=TASK, precision=precision)
        return cls(model_id=model_id, model=model, feature_extractor=extractor,
                   device=torch_device, dtype=torch_dtype)

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities (float32, one per label) per window, in ONE forward pass.

        Each window is normalised on its own by the feature extractor, as the training clips
        were.
        """
        if not windows:
            return []
        lengths = {len(w) for w in windows}
        if len(lengths) > 1:
            raise ValueError(f"keyword windows must have equal lengths, got {sorted(lengths)}")
        inputs = self.feature_extractor(
            [np.asarray(w, dtype=np.float32) for w in windows], sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        )
        values = inputs["input_values"].to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            logits = self.model(values).logits
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return [np.ascontiguousarray(row, dtype=np.float32) for row in probs]
