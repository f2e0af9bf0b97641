"""Local speaker segmentation (AutoModelForAudioFrameClassification): audio in, activity out.

The model gives, for each 20 ms frame of a window, one logit per local speaker slot
(`num_labels`: 2 for microsoft/unispeech-sat-base-plus-sd, trained on two-speaker mixtures).
Slots are local to the window: slot 0 in one window and slot 0 in the next need not be the
same person; models/clustering.py links them. Activities are sigmoid probabilities, so two
slots can be active at once (overlapped speech), as in the model card's example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from harken.models.geometry import FrameGeometry, batchable, live_batch
from harken.models.loading import load_pretrained, resolve_device, resolve_dtype
from harken.models.speakers import feature_extractor_of, load_feature_extractor

TASK = "diarization"  # names the --diarization-model flag in loading errors


class FrameSegmenter:
    """A frame-classification model used as a local speaker segmentation."""

    def __init__(self, *, model_id: str, model: Any, processor: Any, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.model_id = model_id
        self.model = model
        self.feature_extractor = feature_extractor_of(processor)
        self.device = device
        self.dtype = dtype
        self.geometry = FrameGeometry.from_config(model.config)
        self.num_speakers = int(model.config.num_labels)
        self.batchable = batchable(self.feature_extractor, model.config)

    @classmethod
    def from_pretrained(cls, model_id: str, *, device: str = "auto",
                        dtype: str = "auto", precision: str = "auto") -> FrameSegmenter:
        from transformers import AutoModelForAudioFrameClassification

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(torch_device, dtype)
        model = load_pretrained(AutoModelForAudioFrameClassification, model_id,
                                device=torch_device, dtype=torch_dtype, task=TASK,
                                precision=precision)
        processor = load_feature_extractor(model_id, task=TASK)
        return cls(model_id=model_id, model=model, processor=processor, device=torch_device,
                   dtype=torch_dtype)

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Activity [frames, num_speakers] in 0..1 (float32) per window, one forward pass."""
        counts = [self.geometry.num_frames(len(w)) for w in windows]
        results = [np.zeros((0, self.num_speakers), dtype=np.float32)] * len(windows)
        batch = live_batch(self.feature_extractor, windows, counts, device=self.device,
                           dtype=self.dtype, batched=self.batchable)
        if batch is None:
            return results
        live, values, kwargs = batch
        with torch.inference_mode():
            logits = self.model(values, **kwargs).logits
            probs = torch.sigmoid(logits.float()).cpu().numpy()
        for row, index in enumerate(live):
            results[index] = np.ascontiguousarray(probs[row, : counts[index]])
        return results
