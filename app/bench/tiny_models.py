"""Tiny random models of the five tasks' real architectures, built in memory, for the soak
benchmark: it measures the engine over an hour (memory, loop lag, delivery), not the models,
so each model is a few hundred kB and costs little CPU. Same classes and wrappers as the
real checkpoints (HuBERT CTC, UniSpeech-SAT x-vector and frame classification, SEW-D
keyword classification, wav2vec2 + mBART speech translation); nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from harken.app.bench.architectures import (
    LIBRISPEECH_VOCAB,
    SEGMENTATION_SLOTS,
    SPEECH_COMMANDS_LABELS,
    ctc_processor,
)
from harken.app.tasks.loader import ModelLoader
from harken.app.tasks.speakers import SpeakerModels
from harken.models.audio import feature_extractor
from harken.models.captions import CtcCaptioner
from harken.models.diarization import FrameSegmenter
from harken.models.keywords import KeywordSpotter
from harken.models.speakers import XVectorEmbedder
from harken.models.translation import SpeechTranslator

SEED = 1234
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)  # the wav2vec2 family's stack: 20 ms frames
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)
CONV_DIM = (16,) * len(CONV_KERNEL)
SENTENCES = ("the quick brown fox jumps over the lazy dog",
             "guten morgen wie geht es dir heute", "bonjour tout le monde merci beaucoup")
_CPU = torch.device("cpu")
_F32 = torch.float32


def _common(**extra: Any) -> dict[str, Any]:
    return {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "conv_dim": CONV_DIM, "conv_kernel": CONV_KERNEL,
            "conv_stride": CONV_STRIDE, "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 2, "initializer_range": 0.1, **extra}


def tiny_captioner() -> CtcCaptioner:
    from transformers import HubertConfig, HubertForCTC

    torch.manual_seed(SEED)
    config = HubertConfig(**_common(vocab_size=len(LIBRISPEECH_VOCAB), pad_token_id=0,
                                    feat_extract_norm="layer", do_stable_layer_norm=True))
    model = HubertForCTC(config).eval()
    return CtcCaptioner(model_id="tiny:hubert-ctc", model=model,
                        processor=ctc_processor(layer_norm=True), device=_CPU, dtype=_F32)


def tiny_speakers() -> SpeakerModels:
    from transformers import (
        UniSpeechSatConfig,
        UniSpeechSatForAudioFrameClassification,
        UniSpeechSatForXVector,
    )

    def config(**extra: Any) -> Any:
        return UniSpeechSatConfig(**_common(feat_extract_norm="group",
                                            use_weighted_layer_sum=True, codevector_dim=16,
                                            proj_codevector_dim=16,
                                            num_codevectors_per_group=8, **extra))

    torch.manual_seed(SEED)
    xv = UniSpeechSatForXVector(config(tdnn_dim=(32, 32, 32, 32, 64), xvector_output_dim=16,
                                       num_labels=4)).eval()
    seg = UniSpeechSatForAudioFrameClassification(config(num_labels=SEGMENTATION_SLOTS)).eval()
    extractor = feature_extractor(layer_norm=False)
    return SpeakerModels(
        segmenter=FrameSegmenter(model_id="tiny:unispeech-sat-sd", model=seg,
                                 processor=extractor, device=_CPU, dtype=_F32),
        embedder=XVectorEmbedder(model_id="tiny:unispeech-sat-sv", model=xv,
                                 processor=extractor, device=_CPU, dtype=_F32))


def tiny_spotter() -> KeywordSpotter:
    from transformers import SEWDConfig, SEWDForSequenceClassification

    labels = dict(enumerate(SPEECH_COMMANDS_LABELS))
    head: dict[str, Any] = {"num_labels": len(labels), "id2label": labels,
                            "label2id": {v: k for k, v in labels.items()}}
    config = SEWDConfig(**_common(squeeze_factor=2, position_buckets=32,
                                  max_position_embeddings=64, feat_extract_norm="group",
                                  classifier_proj_size=16), **head)
    torch.manual_seed(SEED)
    model = SEWDForSequenceClassification(config).eval()
    return KeywordSpotter(model_id="tiny:sew-d-kws", model=model,
                          feature_extractor=feature_extractor(layer_norm=False), device=_CPU,
                          dtype=_F32)


def mbart50_tokenizer(sentences: Sequence[str] = SENTENCES) -> Any:
    """An mBART-50 tokenizer (its language codes at their real ids) with a tiny unigram
    vocabulary trained offline on `sentences` (tests use it too)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import MBart50Tokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=80, special_tokens=["<unk>", "<s>", "</s>"],
                                      unk_token="<unk>", show_progress=False)
    unigram.train_from_iterator(sentences, trainer)
    pieces = [(str(p), float(s)) for p, s in json.loads(unigram.to_str())["model"]["vocab"]]
    return MBart50Tokenizer(vocab=pieces)


def tiny_translator() -> SpeechTranslator:
    from transformers import (
        MBartConfig,
        SpeechEncoderDecoderConfig,
        SpeechEncoderDecoderModel,
        Wav2Vec2Config,
    )

    tokenizer = mbart50_tokenizer()
    encoder = Wav2Vec2Config(**_common(feat_extract_norm="layer", do_stable_layer_norm=True,
                                       add_adapter=True, adapter_kernel_size=3,
                                       adapter_stride=2, num_adapter_layers=1))
    role: dict[str, Any] = {"is_decoder": True, "add_cross_attention": True,
                            "tie_word_embeddings": False}
    decoder = MBartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2,
                          decoder_layers=2, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=128, scale_embedding=True, pad_token_id=1,
                          bos_token_id=0, eos_token_id=2, init_std=0.1, **role)
    config = SpeechEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 2
    config.pad_token_id = 1
    config.eos_token_id = 2
    torch.manual_seed(SEED)
    model = SpeechEncoderDecoderModel(config=config).eval()
    return SpeechTranslator(model_id="tiny:w2v2-mbart", model=model,
                            feature_extractor=feature_extractor(layer_norm=True),
                            tokenizer=tokenizer, device=_CPU, dtype=_F32)


def tiny_models() -> ModelLoader:
    """All five tasks' models, ready for a Session."""
    return ModelLoader(captioner=tiny_captioner(), spotter=tiny_spotter(),
                       translator=tiny_translator(), speakers=tiny_speakers())
