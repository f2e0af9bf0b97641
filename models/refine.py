"""The second pass of captions: one finished speech segment in, its re-decoded text out.

Any `AutoModelForSpeechSeq2Seq` checkpoint: Whisper (`openai/whisper-base.en`,
`openai/whisper-large-v3-turbo`), or a SpeechEncoderDecoder / Speech2Text ASR model. The
language is forced, never detected: Whisper gets `language=` and `task="transcribe"` (a
bare generate() can drift into translation or loop), an mBART-style decoder gets its
language token as the first generated token; a model with no language tokens at all is
taken as monolingual. A segment longer than the model's window (30 s for Whisper) is cut at
its quietest moments into pieces that fit, decoded as one batch and joined.

Word times do not come from here: models/alignment.py aligns this text to the first pass.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harken.models.audio import SAMPLE_RATE
from harken.models.errors import HarkenError, UnsupportedModelError
from harken.models.loading import load_part, load_pretrained, resolve_device, resolve_dtype
from harken.models.translation import language_tokens

#: generate() warnings that Whisper's own generate() causes on every call, whatever the
#: caller passes (it adds suppress-token arguments to a generation config, and checkpoints
#: ship max_length 448 next to our max_new_tokens): noise on every refined caption. The
#: attention-mask one (pad token == eos token) does not apply: every input is a full
#: 30 s window of log-mel features, which Whisper's encoder takes without a mask.
_BENIGN_GENERATE_WARNINGS = ("Passing `generation_config` together with generation-related",
                             "Both `max_new_tokens`",
                             "The attention mask is not set with a batched input")


class _QuietBenignGenerateWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_BENIGN_GENERATE_WARNINGS)


logging.getLogger("transformers.generation.utils").addFilter(_QuietBenignGenerateWarnings())

TASK = "refine"
DEFAULT_LANGUAGE = "en"
MIN_SEGMENT_S = 0.25  # s: shorter audio has no words worth a decoder pass
WINDOW_S = 30.0  # s: pieces at most, for models without a fixed window (Whisper has 30 s)
SPLIT_SEARCH_S = 5.0  # s before the window's end searched for the quietest cut
SPLIT_FRAME_S = 0.02  # s: energy frames when looking for a cut
PROMPT_TOKENS = 4  # Whisper's decoder prompt: start of transcript, language, task, no timestamps
# Tokens a piece may generate at most, from its length: fluent English is 3 to 4 Whisper
# tokens a second (punctuation and numbers included), so this bounds a decoder that loops on
# a short segment (160 steps, seconds on a CPU) without touching a real transcript.
TOKENS_PER_S = 10.0  # tokens per second of audio
MIN_NEW_TOKENS = 16
#: refine.encoder_dtype: auto is bfloat16 for Whisper's encoder on a CPU that computes in
#: bfloat16 natively (AVX512-BF16, AMX), else the model's dtype (docs/refine.md: measured).
ENCODER_DTYPES = ("auto", "float32", "bfloat16")


class UnsupportedLanguageError(HarkenError):
    """The refine model cannot transcribe the requested language."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineOptions:
    language: str = DEFAULT_LANGUAGE
    num_beams: int = 1
    max_new_tokens: int = 160  # per piece of at most one window (~90 words in 30 s)
    #: Whisper's encoder in this dtype (its output goes back to the model's dtype for the
    #: decoder): see ENCODER_DTYPES.
    encoder_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.encoder_dtype not in ENCODER_DTYPES:
            raise ValueError(f"refine encoder_dtype must be one of {', '.join(ENCODER_DTYPES)}, "
                             f"got {self.encoder_dtype!r}")
        if not self.language.strip():
            raise ValueError("refine language must be a code such as en")
        if not 1 <= self.num_beams <= 16:
            raise ValueError(f"refine num_beams must be 1 to 16, got {self.num_beams}")
        if not 1 <= self.max_new_tokens <= 1024:
            raise ValueError(f"refine max_new_tokens must be 1 to 1024, got "
                             f"{self.max_new_tokens}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RefinedText:
    text: str
    pieces: int  # decoder passes the segment took (more than one: it was split)


def split_points(samples: np.ndarray, *, max_samples: int,
                 search_samples: int) -> list[tuple[int, int]]:
    """Cut `samples` into [start, end) pieces of at most `max_samples`, each cut at the
    quietest frame of the `search_samples` before the limit (a pause between words, when
    there is one)."""
    n = len(samples)
    if max_samples <= 0:
        raise ValueError(f"max_samples must be > 0, got {max_samples}")
    frame = max(1, round(SPLIT_FRAME_S * SAMPLE_RATE))
    pieces: list[tuple[int, int]] = []
    start = 0
    while n - start > max_samples:
        limit = start + max_samples
        lo = max(start + frame, limit - min(search_samples, max_samples // 2))
        n_frames = (limit - lo) // frame
        cut = limit
        if n_frames > 0:
            region = samples[lo: lo + n_frames * frame].astype(np.float64)
            energy = (region.reshape(n_frames, frame) ** 2).mean(axis=1)
            # The quietest frame; among equals the latest (the longest piece).
            best = n_frames - 1 - int(np.argmin(energy[::-1]))
            cut = lo + best * frame + frame // 2
        pieces.append((start, cut))
        start = cut
    pieces.append((start, n))
    return pieces


def whisper_language_kwargs(model: Any, code: str, *, model_id: str) -> dict[str, Any]:
    """generate() arguments that force `code` on a Whisper model (checked)."""
    config = model.generation_config
    if not getattr(config, "is_multilingual", True):
        # English-only checkpoints (*.en) refuse a language argument: they only speak English.
        if code.lower() not in ("en", "english"):
            raise UnsupportedLanguageError(
                f"{model_id!r} is an English-only Whisper model and cannot transcribe "
                f"{code!r}; use refine.language en (--refine-language en), or a "
                "multilingual Whisper model")
        return {}
    table = {token.strip("<|>"): token for token in (getattr(config, "lang_to_id", None) or {})}
    if code.lower() not in table:
        supported = ", ".join(sorted(table)) or "none"
        raise UnsupportedLanguageError(
            f"{model_id!r} cannot transcribe {code!r}: it has no language token for it. "
            f"Supported codes: {supported}. Fix refine.language (--refine-language)")
    return {"language": code.lower(), "task": "transcribe"}


def token_language_kwargs(tokenizer: Any, code: str, *, model_id: str) -> dict[str, Any]:
    """generate() arguments for a decoder with mBART-style language tokens; none for a
    monolingual model (it has no language tokens: nothing to force)."""
    table = language_tokens(tokenizer)
    if not table:
        return {}
    token = table.get(code.lower())
    if token is None:
        raise UnsupportedLanguageError(
            f"{model_id!r} cannot transcribe {code!r}: it has no language token for it. "
            f"Supported codes: {', '.join(sorted(table))}. Fix refine.language "
            "(--refine-language)")
    return {"forced_bos_token_id": int(tokenizer.convert_tokens_to_ids(token))}


class SpeechRefiner:
    """A sequence-to-sequence speech recogniser with its feature extractor and tokenizer."""

    def __init__(self, *, model_id: str, model: Any, feature_extractor: Any, tokenizer: Any,
                 device: torch.device, dtype: torch.dtype,
                 options: RefineOptions | None = None) -> None:
        if not getattr(model.config, "is_encoder_decoder", False):
            raise UnsupportedModelError(
                f"{model_id!r} is not a sequence-to-sequence speech model; --refine-model "
                "needs an AutoModelForSpeechSeq2Seq checkpoint such as openai/whisper-base.en")
        self.model_id = model_id
        self.model = model
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.options = options or RefineOptions()
        self.is_whisper = getattr(model.config, "model_type", "") == "whisper"
        window = getattr(feature_extractor, "n_samples", None) if self.is_whisper else None
        self.window_samples = int(window) if window else round(WINDOW_S * SAMPLE_RATE)
        self.min_samples = math.ceil(MIN_SEGMENT_S * SAMPLE_RATE)
        self._language = self._language_kwargs(self.options.language)
        limit = getattr(model.config, "max_target_positions", None)
        self.max_new_tokens = self.options.max_new_tokens
        if self.is_whisper and isinstance(limit, int):
            # Whisper's decoder has max_target_positions positions, prompt included.
            self.max_new_tokens = max(1, min(self.max_new_tokens, limit - PROMPT_TOKENS))
        self.encoder_dtype = self._encoder_dtype(self.options.encoder_dtype)
        if self.encoder_dtype != dtype:
            # In place: the encoder is only ever called by encode() below, which casts its
            # input and output, so no second copy of its weights is kept.
            model.get_encoder().to(self.encoder_dtype)

    def _encoder_dtype(self, choice: str) -> torch.dtype:
        """bfloat16 only where it pays: Whisper (the encoder, always a full 30 s window, is
        most of the CPU time of a short segment), float32 on a CPU with native bfloat16.
        Measured on the trained Whisper base: the same 24 segment transcripts as float32 at
        two thirds of the CPU time (docs/refine.md)."""
        if not self.is_whisper or self.dtype != torch.float32 or choice == "float32":
            return self.dtype
        if choice == "bfloat16":
            return torch.bfloat16
        native = self.device.type == "cpu" \
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return torch.bfloat16 if native else self.dtype
    def _language_kwargs(self, code: str) -> dict[str, Any]:
        if self.is_whisper:
            return whisper_language_kwargs(self.model, code, model_id=self.model_id)
        return token_language_kwargs(self.tokenizer, code, model_id=self.model_id)

    @classmethod
    def from_pretrained(cls, model_id: str, *, device: str = "auto", dtype: str = "auto",
                        options: RefineOptions | None = None) -> SpeechRefiner:
        from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(torch_device, dtype)
        # fp32 until int8's cost to the refined WER is measured (docs/cpu.md).
        model = load_pretrained(AutoModelForSpeechSeq2Seq, model_id, device=torch_device,
                                dtype=torch_dtype, task=TASK, precision="fp32")
        extractor = load_part(AutoFeatureExtractor, model_id, part="feature extractor",
                              task=TASK)
        tokenizer = load_part(AutoTokenizer, model_id, part="tokenizer", task=TASK)
        return cls(model_id=model_id, model=model, feature_extractor=extractor,
                   tokenizer=tokenizer, device=torch_device, dtype=torch_dtype, options=options)

    def _encode(self, features: torch.Tensor) -> Any:
        """The encoder's pass in its own dtype, returned in the decoder's."""
        from transformers.modeling_outputs import BaseModelOutput

        hidden = self.model.get_encoder()(features.to(self.encoder_dtype)).last_hidden_state
        return BaseModelOutput(last_hidden_state=hidden.to(self.dtype))

    def pieces(self, samples: np.ndarray) -> list[tuple[int, int]]:
        search = round(SPLIT_SEARCH_S * SAMPLE_RATE)
        return split_points(samples, max_samples=self.window_samples, search_samples=search)

    def refine(self, samples: np.ndarray) -> RefinedText:
        """Transcribe one segment (16 kHz float32); blocking (run it off the event loop)."""
        audio = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(audio) < self.min_samples:
            return RefinedText(text="", pieces=0)
        spans = [(a, b) for a, b in self.pieces(audio) if b - a >= self.min_samples]
        inputs = self.feature_extractor([audio[a:b] for a, b in spans],
                                        sampling_rate=SAMPLE_RATE, return_tensors="pt",
                                        padding="max_length" if self.is_whisper else True)
        key = "input_features" if "input_features" in inputs else "input_values"
        values = inputs[key].to(self.device, dtype=self.dtype)
        kwargs: dict[str, Any] = dict(self._language)
        if "attention_mask" in inputs and not self.is_whisper:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        longest_s = max(b - a for a, b in spans) / SAMPLE_RATE
        kwargs["max_new_tokens"] = min(self.max_new_tokens,
                                       math.ceil(TOKENS_PER_S * longest_s) + MIN_NEW_TOKENS)
        with torch.inference_mode():
            if self.encoder_dtype == self.dtype:
                generated = self.model.generate(values, num_beams=self.options.num_beams,
                                                **kwargs)
            else:
                generated = self.model.generate(encoder_outputs=self._encode(values),
                                                num_beams=self.options.num_beams, **kwargs)
        sequences = getattr(generated, "sequences", generated)
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        text = " ".join(t.strip() for t in texts if t.strip())
        return RefinedText(text=text, pieces=len(spans))
