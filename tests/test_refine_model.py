"""SpeechRefiner through the real loading path, with a tiny random Whisper: forced language,
window splitting, and the clear errors for bad checkpoints and languages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import build_tiny_ctc, speechlike_audio
from tiny_refine_models import WINDOW_S, build_tiny_whisper

from harken.models.audio import SAMPLE_RATE
from harken.models.errors import ModelNotFoundError, UnsupportedModelError
from harken.models.refine import (
    RefineOptions,
    SpeechRefiner,
    UnsupportedLanguageError,
    split_points,
)


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("refine") / "whisper")


@pytest.fixture(scope="module")
def refiner(whisper_dir: Path) -> SpeechRefiner:
    return SpeechRefiner.from_pretrained(str(whisper_dir), device="cpu",
                                         options=RefineOptions(max_new_tokens=6))


def test_refines_a_segment_with_the_forced_language(refiner: SpeechRefiner) -> None:
    assert refiner.is_whisper
    assert refiner.window_samples == WINDOW_S * SAMPLE_RATE
    audio = speechlike_audio(1.0, seed=3)
    first = refiner.refine(audio)
    assert first.pieces == 1
    assert first.text.strip()  # the random decoder writes words (special tokens suppressed)
    assert first.text.isascii()
    assert refiner.refine(audio) == first  # greedy decoding: the same text again


def test_a_segment_longer_than_the_window_is_split(refiner: SpeechRefiner) -> None:
    audio = speechlike_audio(WINDOW_S * 2.2, seed=4)
    spans = refiner.pieces(audio)
    assert len(spans) == 3
    assert all(b - a <= refiner.window_samples for a, b in spans)
    assert spans[0][0] == 0
    assert spans[-1][1] == len(audio)
    out = refiner.refine(audio)
    assert out.pieces == 3
    assert out.text.strip()


def test_too_short_audio_gives_no_text(refiner: SpeechRefiner) -> None:
    out = refiner.refine(np.zeros(SAMPLE_RATE // 10, np.float32))
    assert (out.text, out.pieces) == ("", 0)


def test_split_points_cut_in_the_quiet() -> None:
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(10 * SAMPLE_RATE).astype(np.float32)
    gap = slice(round(7.2 * SAMPLE_RATE), round(7.5 * SAMPLE_RATE))
    audio[gap] *= 1e-4
    spans = split_points(audio, max_samples=8 * SAMPLE_RATE, search_samples=3 * SAMPLE_RATE)
    assert len(spans) == 2
    cut = spans[0][1]
    assert gap.start <= cut < gap.stop
    assert spans == [(0, cut), (cut, len(audio))]
    assert split_points(audio[:100], max_samples=8 * SAMPLE_RATE,
                        search_samples=SAMPLE_RATE) == [(0, 100)]


def test_language_is_checked_against_the_model(refiner: SpeechRefiner,
                                               whisper_dir: Path) -> None:
    german = SpeechRefiner.from_pretrained(str(whisper_dir), device="cpu",
                                           options=RefineOptions(language="de",
                                                                 max_new_tokens=4))
    assert german.refine(speechlike_audio(0.5, seed=1)).pieces == 1
    with pytest.raises(UnsupportedLanguageError, match=r"'xx'.*Supported codes: de, en, fr"):
        SpeechRefiner(model_id="tiny", model=refiner.model,
                      feature_extractor=refiner.feature_extractor, tokenizer=refiner.tokenizer,
                      device=refiner.device, dtype=refiner.dtype,
                      options=RefineOptions(language="xx"))


def test_english_only_whisper(tmp_path: Path) -> None:
    folder = build_tiny_whisper(tmp_path / "whisper-en", english_only=True)
    english = SpeechRefiner.from_pretrained(str(folder), device="cpu",
                                            options=RefineOptions(max_new_tokens=4))
    assert english.refine(speechlike_audio(0.5, seed=2)).pieces == 1
    with pytest.raises(UnsupportedLanguageError, match="English-only"):
        SpeechRefiner.from_pretrained(str(folder), device="cpu",
                                      options=RefineOptions(language="de"))


def test_bad_checkpoints_fail_with_the_fix(tmp_path: Path) -> None:
    ctc = build_tiny_ctc("hubert", tmp_path / "hubert")
    with pytest.raises(UnsupportedModelError, match="refine"):
        SpeechRefiner.from_pretrained(str(ctc), device="cpu")
    with pytest.raises(ModelNotFoundError, match="--refine-model"):
        SpeechRefiner.from_pretrained(str(tmp_path / "missing"), device="cpu")


class Spy:
    """Wraps a model's generate(): records its keyword arguments."""

    def __init__(self, generate: object) -> None:
        self.generate = generate
        self.calls: list[dict[str, object]] = []

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls.append(kwargs)
        return self.generate(*args, **kwargs)  # type: ignore[operator]


@pytest.mark.parametrize("choice", ["float32", "bfloat16"])
def test_encoder_dtype(whisper_dir: Path, choice: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """bfloat16: the encoder's weights and pass in bfloat16, the decoder in float32 given
    the encoder's output (so the encoder runs once per segment, in its dtype)."""
    import torch

    r = SpeechRefiner.from_pretrained(str(whisper_dir), device="cpu",
                                      options=RefineOptions(encoder_dtype=choice))
    expected = getattr(torch, choice)
    assert r.encoder_dtype == expected
    assert next(r.model.get_encoder().parameters()).dtype == expected
    assert next(r.model.get_decoder().parameters()).dtype == torch.float32
    spy = Spy(r.model.generate)
    monkeypatch.setattr(r.model, "generate", spy)
    out = r.refine(speechlike_audio(1.0, seed=3))
    assert out.text.strip()
    assert out.pieces == 1
    given = spy.calls[0].get("encoder_outputs")
    if choice == "float32":
        assert given is None  # generate() runs the encoder itself
    else:
        assert given.last_hidden_state.dtype == torch.float32  # type: ignore[attr-defined]
        # Split pieces go through the encoder as one batch too.
        assert r.refine(speechlike_audio(WINDOW_S * 1.5, seed=4)).pieces == 2


def test_encoder_dtype_auto_follows_the_cpu(whisper_dir: Path) -> None:
    import torch

    r = SpeechRefiner.from_pretrained(str(whisper_dir), device="cpu")
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert r.encoder_dtype == (torch.bfloat16 if native else torch.float32)
    with pytest.raises(ValueError, match="encoder_dtype"):
        RefineOptions(encoder_dtype="float16")


def test_new_tokens_are_bounded_by_the_segment_length(whisper_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A looping decoder stops after ~10 tokens a second of audio, not at max_new_tokens."""
    r = SpeechRefiner.from_pretrained(str(whisper_dir), device="cpu",
                                      options=RefineOptions(max_new_tokens=1024))
    spy = Spy(r.model.generate)
    monkeypatch.setattr(r.model, "generate", spy)
    r.refine(speechlike_audio(0.5, seed=3))
    r.refine(speechlike_audio(WINDOW_S * 1.5, seed=4))  # two pieces: the longer one counts
    assert [c["max_new_tokens"] for c in spy.calls] == [
        5 + 16, min(r.max_new_tokens, 10 * WINDOW_S + 16)]
