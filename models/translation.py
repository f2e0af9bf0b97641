"""Speech translation: one speech segment in, its translation into each target language out.

A SpeechEncoderDecoderModel (AutoModelForSpeechSeq2Seq) such as
facebook/wav2vec2-xls-r-300m-en-to-15: a wav2vec2 encoder and an mBART-50 decoder. The target
language is chosen by forcing its language token (`de_DE` for `de`) as the first generated
token. The encoder runs once per segment; the decoder runs once per target language.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harken.models.audio import SAMPLE_RATE
from harken.models.errors import UnsupportedLanguageError, UnsupportedModelError
from harken.models.loading import (
    check_head,
    load_part,
    load_pretrained,
    resolve_device,
    resolve_dtype,
)

TASK = "translation"
MIN_SEGMENT_S = 0.25  # s: shorter audio is too short for the encoder's conv stack + adapter
# mBART-50 language tokens: ISO 639-1 (or -3) code, underscore, region (de_DE, en_XX, zh_CN).
_MBART_TOKEN = re.compile(r"^([a-z]{2,3})_[A-Z]{2}$")
# M2M100/NLLB-style tokens, accepted too: __de__
_DUNDER_TOKEN = re.compile(r"^__([a-z]{2,3})__$")
# Tokens a segment may generate at most, from its length: speech is 2 to 4 words a second,
# 1 to 3 mBART-50 tokens a word in the 15 target languages (more in Japanese and Chinese),
# so this bounds a decoder that loops on a short segment (up to max_new_tokens steps, seconds
# on a CPU) and, by those rates, leaves a real translation alone (not measured with a trained
# translator; `truncated` says when it cuts one), as models/refine.py bounds Whisper.
TOKENS_PER_S = 12.0  # tokens per second of audio
MIN_NEW_TOKENS = 16


@dataclass(frozen=True, slots=True)
class TargetLanguage:
    code: str  # what the user asked for, e.g. "de"
    token: str  # the tokenizer's language token, e.g. "de_DE"
    token_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationOptions:
    num_beams: int = 1
    max_new_tokens: int = 96

    def __post_init__(self) -> None:
        if not 1 <= self.num_beams <= 16:
            raise ValueError(f"translation num_beams must be 1 to 16, got {self.num_beams}")
        if not 1 <= self.max_new_tokens <= 1024:
            raise ValueError("translation max_new_tokens must be 1 to 1024, "
                             f"got {self.max_new_tokens}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TranslatedText:
    lang: str  # the requested code
    text: str
    token_ids: tuple[int, ...]  # generated ids, the forced language token first
    # Generation reached the token bound: the model did not end it (mBART forces its end
    # token at the bound, so the last token cannot tell).
    truncated: bool = False


def language_tokens(tokenizer: Any) -> dict[str, str]:
    """ISO code -> language token, read from the tokenizer's special tokens."""
    candidates: list[str] = list(getattr(tokenizer, "all_special_tokens", ()) or ())
    candidates += list(getattr(tokenizer, "lang_code_to_id", {}) or {})
    table: dict[str, str] = {}
    for token in candidates:
        match = _MBART_TOKEN.match(token) or _DUNDER_TOKEN.match(token)
        if match is not None:
            table.setdefault(match.group(1), token)
    return table


def resolve_languages(codes: Sequence[str], tokenizer: Any, *, model_id: str,
                      overrides: Mapping[str, str] | None = None) -> tuple[TargetLanguage, ...]:
    """Map requested codes (`de`, or a token such as `de_DE`) to the tokenizer's tokens.

    `overrides` maps codes to tokens for checkpoints whose tokens do not follow the mBART-50
    pattern (translation.language_tokens in the config).
    """
    table = language_tokens(tokenizer)
    table.update(overrides or {})
    tokens = set(table.values())
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[TargetLanguage] = []
    for raw in codes:
        code = raw.strip()
        token = code if code in tokens else table.get(code.lower())
        if token is None:
            supported = ", ".join(sorted(table)) or "none"
            raise UnsupportedLanguageError(
                f"{model_id!r} cannot translate into {code!r}: it has no language token for it. "
                f"Supported codes: {supported}. Fix --translate (or map a code to a token with "
                "translation.language_tokens in the config)"
            )
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == unk:
            raise UnsupportedLanguageError(
                f"language token {token!r} for {code!r} is not in the vocabulary of "
                f"{model_id!r}; fix translation.language_tokens in the config"
            )
        if all(t.code != code for t in out):
            out.append(TargetLanguage(code=code, token=token, token_id=int(token_id)))
    return tuple(out)


class SpeechTranslator:
    """A speech encoder-decoder with its feature extractor and tokenizer."""

    def __init__(self, *, model_id: str, model: Any, feature_extractor: Any, tokenizer: Any,
                 device: torch.device, dtype: torch.dtype,
                 options: GenerationOptions | None = None) -> None:
        if not getattr(model.config, "is_encoder_decoder", False):
            raise UnsupportedModelError(
                f"{model_id!r} is not an encoder-decoder model; translation needs a "
                "SpeechEncoderDecoderModel such as facebook/wav2vec2-xls-r-300m-en-to-15"
            )
        self.model_id = model_id
        self.model = model
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.options = options or GenerationOptions()
        self.min_samples = math.ceil(MIN_SEGMENT_S * SAMPLE_RATE)

    @classmethod
    def from_pretrained(cls, model_id: str, *, device: str = "auto", dtype: str = "auto",
                        options: GenerationOptions | None = None,
                        precision: str = "auto") -> SpeechTranslator:
        from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(torch_device, dtype)
        # The head first: a checkpoint of another task is named as such, not as a
        # checkpoint with a missing tokenizer.
        check_head(AutoModelForSpeechSeq2Seq, model_id, task=TASK)
        extractor = load_part(AutoFeatureExtractor, model_id, part="feature extractor",
                              task=TASK)
        tokenizer = load_part(AutoTokenizer, model_id, part="tokenizer", task=TASK)
        model = load_pretrained(AutoModelForSpeechSeq2Seq, model_id, device=torch_device,
                                dtype=torch_dtype, task=TASK, precision=precision)
        return cls(model_id=model_id, model=model, feature_extractor=extractor,
                   tokenizer=tokenizer, device=torch_device, dtype=torch_dtype, options=options)

    def languages(self, codes: Sequence[str], *,
                  overrides: Mapping[str, str] | None = None) -> tuple[TargetLanguage, ...]:
        return resolve_languages(codes, self.tokenizer, model_id=self.model_id,
                                 overrides=overrides)

    def supported_languages(self) -> tuple[str, ...]:
        return tuple(sorted(language_tokens(self.tokenizer)))

    def max_new_tokens(self, seconds: float) -> int:
        """The most tokens a segment of `seconds` may generate (TOKENS_PER_S)."""
        return min(self.options.max_new_tokens, math.ceil(TOKENS_PER_S * seconds)
                   + MIN_NEW_TOKENS)

    def translate(self, samples: np.ndarray,
                  targets: Sequence[TargetLanguage]) -> list[TranslatedText]:
        """Translate one segment (16 kHz float32) into every target; blocking (run it off
        the event loop)."""
        if len(samples) < self.min_samples or not targets:
            return [TranslatedText(lang=t.code, text="", token_ids=()) for t in targets]
        inputs = self.feature_extractor(np.asarray(samples, dtype=np.float32),
                                        sampling_rate=SAMPLE_RATE, return_tensors="pt")
        values = inputs["input_values"].to(self.device, dtype=self.dtype)
        kwargs: dict[str, Any] = {}
        if "attention_mask" in inputs:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        results: list[TranslatedText] = []
        limit = self.max_new_tokens(len(samples) / SAMPLE_RATE)
        with torch.inference_mode():
            # The encoder is the same for every language: run it once.
            encoder_outputs = self.model.encoder(values, **kwargs)
            for target in targets:
                # A fresh container each time: with beams, generate() replaces its hidden
                # states by their beam-expanded copy in place, which the next language
                # would then expand again.
                fresh = type(encoder_outputs)(**encoder_outputs)
                generated = self.model.generate(
                    values, encoder_outputs=fresh, forced_bos_token_id=target.token_id,
                    num_beams=self.options.num_beams, max_new_tokens=limit, **kwargs,
                )
                # generate() returns the decoder start token first; what follows was generated.
                ids = [int(i) for i in generated[0, 1:].tolist()]
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                results.append(TranslatedText(lang=target.code, text=text, token_ids=tuple(ids),
                                              truncated=len(ids) >= limit))
        return results
