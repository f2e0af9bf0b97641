"""Tiny randomly initialised keyword and translation models of the real architectures.

Saved with save_pretrained (with a real feature extractor / tokenizer) and loaded by the tests
through the production loading path, like tests/tiny_models.py does for captions:

- keywords: SEWDForSequenceClassification with the Speech Commands label set of
  anton-l/sew-d-mid-400k-ft-keyword-spotting in its config (id2label), and a
  Wav2Vec2FeatureExtractor. `favour="yes"` adds a large bias to that class's logit, so the
  model says "yes" to every window: the stream tests can then count exactly when windows are
  scored and triggers fire.
- translation: SpeechEncoderDecoderModel = tiny Wav2Vec2 encoder (with an adapter, like
  facebook/wav2vec2-xls-r-300m-en-to-15) + tiny MBart decoder, decoder start </s> = 2, and an
  MBart50Tokenizer built from a Unigram model trained in-process on a few sentences; the
  tokenizer adds the 52 mBART-50 language tokens (de_DE, fr_XX, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tiny_models import CONV_DIM, CONV_KERNEL, CONV_STRIDE, SEED
from transformers import (
    MBart50Tokenizer,
    MBartConfig,
    SEWDConfig,
    SEWDForSequenceClassification,
    SpeechEncoderDecoderConfig,
    SpeechEncoderDecoderModel,
    Wav2Vec2Config,
)

from harken.app.bench.architectures import SPEECH_COMMANDS_LABELS
from harken.app.bench.tiny_models import mbart50_tokenizer
from harken.models.audio import feature_extractor

SENTENCES = (
    "yes no up down left right on off stop go",
    "the quick brown fox jumps over the lazy dog",
    "guten morgen wie geht es dir heute",
    "bonjour tout le monde merci beaucoup",
    "hallo welt das ist ein kleiner test",
)
FAVOUR_LOGIT = 12.0  # added to the favoured label's logit: softmax ~1.0 for it


def build_tiny_keyword_model(folder: Path, *, favour: str | None = None) -> Path:
    labels = dict(enumerate(SPEECH_COMMANDS_LABELS))
    head: dict[str, Any] = {"num_labels": len(labels), "id2label": labels,
                            "label2id": {v: k for k, v in labels.items()}}
    config = SEWDConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=CONV_DIM, conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, squeeze_factor=2,
        position_buckets=32, max_position_embeddings=64, feat_extract_norm="group",
        classifier_proj_size=16, initializer_range=0.1, **head,
    )
    torch.manual_seed(SEED)
    model = SEWDForSequenceClassification(config).eval()
    if favour is not None:
        with torch.no_grad():
            model.classifier.bias[config.label2id[favour]] += FAVOUR_LOGIT
    model.save_pretrained(folder)
    feature_extractor(layer_norm=False).save_pretrained(folder)
    return folder


def tiny_mbart50_tokenizer() -> MBart50Tokenizer:
    tokenizer: MBart50Tokenizer = mbart50_tokenizer(SENTENCES)
    return tokenizer


def build_tiny_translation_model(folder: Path) -> Path:
    tokenizer = tiny_mbart50_tokenizer()
    encoder = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=CONV_DIM, conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True,
        add_adapter=True, adapter_kernel_size=3, adapter_stride=2, num_adapter_layers=1,
    )
    # An untied output layer: with tied embeddings a tiny random decoder just repeats the
    # forced language token, and the tests want text to flow through to the subtitles.
    role: dict[str, Any] = {"is_decoder": True, "add_cross_attention": True,
                            "tie_word_embeddings": False}
    decoder = MBartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=128, scale_embedding=True,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, init_std=0.1, **role,
    )
    config = SpeechEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 2
    config.pad_token_id = 1
    config.eos_token_id = 2
    torch.manual_seed(SEED)
    model = SpeechEncoderDecoderModel(config=config).eval()
    model.save_pretrained(folder)
    feature_extractor(layer_norm=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_sentencepiece_mbart50_tokenizer(folder: Path) -> Path:
    """The layout of 2021 mBART-50 checkpoints: a sentencepiece model, no tokenizer.json."""
    import io

    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 20), model_writer=model,
                                   vocab_size=60, model_type="bpe", unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, minloglevel=2)
    (folder / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "MBart50Tokenizer", "src_lang": "en_XX"}), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
         "mask_token": "<mask>"}), encoding="utf-8")
    return folder
