"""The CTC captioner: audio windows in, per-frame log-probs out; greedy decoding with word times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from harken.models.audio import SAMPLE_RATE
from harken.models.errors import UnsupportedModelError
from harken.models.geometry import FrameGeometry, audio_batch, batchable
from harken.models.loading import (
    check_head,
    load_pretrained,
    load_processor,
    resolve_device,
    resolve_dtype,
)
from harken.models.transcript import TimedWord, Transcript

TASK = "captions"


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
        cls, model_id: str, *, device: str = "auto", dtype: str = "auto",
        precision: str = "auto",
    ) -> CtcCaptioner:
        from transformers import AutoModelForCTC

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(torch_device, dtype)
        # The head first: a checkpoint of another task is named as such, not as a
        # checkpoint with a missing tokenizer.
        check_head(AutoModelForCTC, model_id, task=TASK)
        processor = load_processor(model_id, task=TASK)
        model = load_pretrained(
            AutoModelForCTC, model_id, device=torch_device, dtype=torch_dtype, task=TASK,
            precision=precision,
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
        # The caller normalises with the segment's running statistics (do_normalize=False).
        values, kwargs = audio_batch(self.feature_extractor, [windows[i] for i in live],
                                     device=self.device, dtype=self.dtype,
                                     batched=self.batchable, normalize=False)
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
