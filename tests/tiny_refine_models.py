"""A tiny randomly initialised Whisper (WhisperForConditionalGeneration) with a real
WhisperProcessor, saved with save_pretrained and loaded by the tests through the production
loading path (models/refine.py), like tests/tiny_task_models.py does for translation.

- The tokenizer is a byte-level BPE trained in-process on a few sentences (letters and the
  space marker only, so whatever the random decoder emits decodes to plain ASCII), with the
  Whisper special tokens (<|startoftranscript|>, a few language tokens, <|transcribe|>,
  <|notimestamps|>, ...) and a generation config that maps them (lang_to_id, task_to_id).
  Every special token but end-of-text is suppressed, so the random decoder writes words.
- The feature extractor has a WINDOW_S window instead of 30 s (the encoder's positions
  match), which keeps the tests fast and lets them cross the window with short audio.
- `english_only=True` builds the layout of openai/whisper-*.en (is_multilingual false).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_models import SEED
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

SENTENCES = (
    "and so my fellow americans ask not what your country can do for you",
    "the quick brown fox jumps over the lazy dog",
    "he hoped there would be stew for dinner turnips and carrots",
)
LANGUAGES = ("en", "de", "fr")
WINDOW_S = 2  # s: the feature extractor's chunk_length (Whisper's is 30)
HOP = 160  # samples per mel frame, as Whisper
END = "<|endoftext|>"


def tiny_whisper_tokenizer(languages: tuple[str, ...] = LANGUAGES) -> WhisperTokenizer:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=120, show_progress=False, limit_alphabet=27,
                                  initial_alphabet=list("abcdefghijklmnopqrstuvwxyz\u0120"))
    bpe.train_from_iterator(SENTENCES, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab[END] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token=END)
    specials = ["<|startoftranscript|>", *[f"<|{c}|>" for c in languages], "<|translate|>",
                "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                "<|notimestamps|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def build_tiny_whisper(folder: Path, *, english_only: bool = False) -> Path:
    languages = ("en",) if english_only else LANGUAGES
    tokenizer = tiny_whisper_tokenizer(languages)
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in tokenizer.all_special_tokens}
    end = ids[END]
    frames = WINDOW_S * 16_000 // HOP
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=frames // 2,
        max_target_positions=48, pad_token_id=end, bos_token_id=end, eos_token_id=end,
        decoder_start_token_id=ids["<|startoftranscript|>"], suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    torch.manual_seed(SEED)
    model = WhisperForConditionalGeneration(config).eval()
    special = [i for t, i in ids.items() if t != END]
    model.generation_config = GenerationConfig(
        bos_token_id=end, eos_token_id=end, pad_token_id=end,
        decoder_start_token_id=ids["<|startoftranscript|>"], is_multilingual=not english_only,
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in languages},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"], suppress_tokens=special, max_length=48,
    )
    model.save_pretrained(folder)
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=WINDOW_S,
                                        hop_length=HOP)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
