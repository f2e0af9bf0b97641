"""The speech translator through the real loading path (tiny wav2vec2 + mBART, mBART-50 codes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_models import speechlike_audio
from tiny_task_models import build_tiny_translation_model

from harken.app.bench.architectures import mbart50_sized_tokenizer
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import UnsupportedModelError
from harken.models.translation import (
    MIN_NEW_TOKENS,
    TOKENS_PER_S,
    GenerationOptions,
    SpeechTranslator,
    UnsupportedLanguageError,
    language_tokens,
    resolve_languages,
)

MAX_NEW = 6


@pytest.fixture(scope="module")
def translator(tmp_path_factory: pytest.TempPathFactory) -> SpeechTranslator:
    folder = build_tiny_translation_model(tmp_path_factory.mktemp("tr") / "s2t")
    return SpeechTranslator.from_pretrained(str(folder), device="cpu",
                                            options=GenerationOptions(max_new_tokens=MAX_NEW))


def test_iso_codes_map_to_mbart50_language_tokens(translator: SpeechTranslator) -> None:
    tok = translator.tokenizer
    de, fr = translator.languages(["de", "fr"])
    assert (de.code, de.token, de.token_id) == ("de", "de_DE", tok.convert_tokens_to_ids("de_DE"))
    assert (fr.token, fr.token_id) == ("fr_XX", tok.convert_tokens_to_ids("fr_XX"))
    # A token is accepted as is, and codes are case-insensitive.
    assert translator.languages(["de_DE"])[0].token == "de_DE"
    assert translator.languages(["ZH"])[0].token == "zh_CN"
    assert len(translator.supported_languages()) == 52


def test_an_unsupported_code_lists_the_supported_ones(translator: SpeechTranslator) -> None:
    with pytest.raises(UnsupportedLanguageError, match=r"cannot translate into 'ca'.*de, en"):
        translator.languages(["de", "ca"])
    # A checkpoint-specific mapping in the config makes it usable.
    (ca,) = translator.languages(["ca"], overrides={"ca": "es_XX"})
    assert ca.token == "es_XX"
    with pytest.raises(UnsupportedLanguageError, match="not in the vocabulary"):
        translator.languages(["xx"], overrides={"xx": "xx_XX"})


def test_the_forced_language_token_is_the_first_generated_token(
        translator: SpeechTranslator) -> None:
    audio = speechlike_audio(2.0, seed=4)
    targets = translator.languages(["de", "fr"])
    results = translator.translate(audio, targets)
    assert [r.lang for r in results] == ["de", "fr"]
    for result, target in zip(results, targets, strict=True):
        assert result.token_ids[0] == target.token_id
        assert 1 < len(result.token_ids) <= MAX_NEW
        assert result.text == translator.tokenizer.decode(list(result.token_ids),
                                                          skip_special_tokens=True).strip()
    # Left alone, the model would start differently: the forcing is what picks the language.
    inputs = translator.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.inference_mode():
        free = translator.model.generate(inputs["input_values"],
                                         attention_mask=inputs["attention_mask"],
                                         max_new_tokens=2)
    assert int(free[0, 1]) not in {t.token_id for t in targets}


def test_reusing_the_encoder_equals_plain_generate(translator: SpeechTranslator) -> None:
    audio = speechlike_audio(1.5, seed=9)
    (target,) = translator.languages(["fr"])
    ours = translator.translate(audio, [target])[0].token_ids
    inputs = translator.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.inference_mode():
        plain = translator.model.generate(inputs["input_values"],
                                          attention_mask=inputs["attention_mask"],
                                          forced_bos_token_id=target.token_id,
                                          max_new_tokens=MAX_NEW)
    assert list(ours) == [int(i) for i in plain[0, 1:]]


def test_beam_search_into_several_languages_equals_each_alone(
        translator: SpeechTranslator) -> None:
    """Regression: with num_beams > 1 the second language reused the first one's
    beam-expanded encoder output and every segment failed with a shape error."""
    beams = SpeechTranslator(model_id=translator.model_id, model=translator.model,
                             feature_extractor=translator.feature_extractor,
                             tokenizer=translator.tokenizer, device=translator.device,
                             dtype=translator.dtype,
                             options=GenerationOptions(num_beams=3, max_new_tokens=MAX_NEW))
    audio = speechlike_audio(1.5, seed=11)
    targets = translator.languages(["de", "fr", "es"])
    together = beams.translate(audio, targets)
    assert [r.lang for r in together] == ["de", "fr", "es"]
    for result, target in zip(together, targets, strict=True):
        assert result.token_ids[0] == target.token_id
        assert beams.translate(audio, [target]) == [result]


def test_too_short_audio_gives_empty_translations(translator: SpeechTranslator) -> None:
    out = translator.translate(speechlike_audio(0.1), translator.languages(["de"]))
    assert out[0].text == ""
    assert out[0].token_ids == ()


def test_a_ctc_model_is_not_a_translation_model(tiny_ctc_dirs: dict[str, Path]) -> None:
    with pytest.raises(UnsupportedModelError):
        SpeechTranslator.from_pretrained(str(tiny_ctc_dirs["hubert"]), device="cpu")


def test_real_mbart50_ids_in_the_full_size_tokenizer() -> None:
    # The benchmark's tokenizer has the real vocabulary size, so tokens have their real ids.
    tok = mbart50_sized_tokenizer()
    assert len(tok) == 250054
    table = language_tokens(tok)
    assert table["de"] == "de_DE"
    assert table["en"] == "en_XX"
    (de,) = resolve_languages(["de"], tok, model_id="m")
    assert de.token_id == 250003


def test_a_sentencepiece_only_tokenizer_loads_with_real_language_ids(tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece", reason="sentencepiece is a dependency; run make setup")
    from tiny_task_models import save_sentencepiece_mbart50_tokenizer
    from transformers import AutoTokenizer

    from harken.models.loading import load_part

    folder = save_sentencepiece_mbart50_tokenizer(tmp_path / "spm")
    tok = load_part(AutoTokenizer, str(folder), part="tokenizer", task="translation")
    # fairseq layout: language codes follow the 60 pieces and the offset of 1 (ar_AR first).
    de, fr = resolve_languages(["de", "fr"], tok, model_id="spm")
    assert (de.token_id, fr.token_id) == (60 + 1 + 2, 60 + 1 + 7)
    assert tok.decode(tok("guten morgen").input_ids, skip_special_tokens=True) == "guten morgen"


@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")
def test_a_short_segment_generates_tokens_bounded_by_its_length(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A decoder that never ends by itself (the tiny one made to need more tokens than it
    may have, as a looping model) stops at the bound a segment's length sets, not at
    max_new_tokens, and says so."""
    folder = build_tiny_translation_model(tmp_path_factory.mktemp("tr") / "s2t")
    looping = SpeechTranslator.from_pretrained(str(folder), device="cpu",
                                               options=GenerationOptions(max_new_tokens=200))
    # No end token before the bound (transformers warns that it cannot be met: wanted).
    looping.model.generation_config.min_new_tokens = 1000
    bound = looping.max_new_tokens(0.5)
    assert bound == math.ceil(TOKENS_PER_S * 0.5) + MIN_NEW_TOKENS < 200
    (result,) = looping.translate(speechlike_audio(0.5, seed=3), looping.languages(["de"]))
    assert len(result.token_ids) == bound
    assert result.truncated
    assert looping.max_new_tokens(60.0) == 200  # a long segment keeps the configured cap


def test_a_translation_that_ends_itself_is_not_truncated(translator: SpeechTranslator) -> None:
    (result,) = translator.translate(speechlike_audio(2.0, seed=4), translator.languages(["de"]))
    assert len(result.token_ids) < MAX_NEW  # the tiny decoder ends early by itself
    assert not result.truncated
