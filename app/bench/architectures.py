"""Full-size architectures with random weights, for benchmarks.

Random weights have the same compute as trained ones, so speed and memory figures hold for
the real checkpoints; accuracy figures do not (and a random decoder never emits
end-of-sequence, so every translation runs to max_new_tokens: the worst case).

- captions: facebook/hubert-large-ls960-ft and a HuBERT-base CTC model shaped like
  facebook/wav2vec2-base-960h, with the 32-token LibriSpeech vocabulary.
- speakers: UniSpeech-SAT "base" (microsoft/unispeech-sat-base-plus-sv and -sd: 768 wide,
  12 layers, group-norm feature encoder) and "large" (1024 wide, 24 layers, layer-norm
  feature encoder), with the weighted layer sum of the fine-tuned heads, the default x-vector
  TDNN (512-dim embeddings) and two local speaker slots for segmentation.
- keywords: SEW-D mid as published for asapp/sew-d-mid-100k (the base of
  anton-l/sew-d-mid-400k-ft-keyword-spotting): hidden 512, 24 layers, 8 heads, FFN 2048, the
  13-layer SEW conv stack, squeeze factor 2; a 12-class head with the Speech Commands labels.
- translation: facebook/wav2vec2-xls-r-300m-en-to-15: an XLS-R 300M encoder (hidden 1024,
  24 layers, stable layer norm) with 3 adapter layers of stride 2, and an mBART-large-50
  decoder (12 layers, d_model 1024, 250054 tokens, decoder start = </s> = 2). The tokenizer
  is an mBART-50 tokenizer of the same size, so language tokens have their real ids
  (de_DE = 250003); its other pieces are placeholders.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from harken.models.audio import feature_extractor
from harken.models.captions import CtcCaptioner
from harken.models.diarization import FrameSegmenter
from harken.models.keywords import KeywordSpotter
from harken.models.loading import apply_precision, resolve_device, resolve_dtype
from harken.models.speakers import XVectorEmbedder
from harken.models.translation import SpeechTranslator

RANDOM_CTC_ARCHS = ("hubert-base", "hubert-large")

# The character vocabulary of the LibriSpeech-960h CTC checkpoints (blank = <pad>).
LIBRISPEECH_VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ")


def ctc_processor(*, layer_norm: bool) -> Any:
    """A real Wav2Vec2Processor with the LibriSpeech character vocabulary."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(LIBRISPEECH_VOCAB)}))
        tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), unk_token="<unk>", pad_token="<pad>",
                                         bos_token="<s>", eos_token="</s>",
                                         word_delimiter_token="|")
    extractor = feature_extractor(layer_norm=layer_norm)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def hubert_ctc_config(arch: str) -> Any:
    from transformers import HubertConfig

    vocab = len(LIBRISPEECH_VOCAB)
    if arch == "hubert-large":
        return HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096, feat_extract_norm="layer",
                            do_stable_layer_norm=True, conv_bias=True, vocab_size=vocab,
                            pad_token_id=0)
    if arch == "hubert-base":
        return HubertConfig(vocab_size=vocab, pad_token_id=0)  # the defaults are base-size
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(RANDOM_CTC_ARCHS)}")


def built_on(device: torch.device, cls: Any, config: Any) -> Any:
    """`cls(config)` with its random weights drawn on `device`: on a GPU in seconds, where
    drawing hundreds of millions of them on the CPU first takes tens of seconds."""
    with device:
        return cls(config)


def random_ctc(arch: str, *, device: str = "auto", dtype: str = "auto", precision: str = "fp32",
               seed: int = 0) -> CtcCaptioner:
    """A CtcCaptioner of a full-size architecture with random weights (nothing downloaded)."""
    from transformers import HubertForCTC

    config = hubert_ctc_config(arch)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype)
    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    model: Any = built_on(torch_device, HubertForCTC, config)
    model = apply_precision(model.to(device=torch_device, dtype=torch_dtype).eval(),
                            device=torch_device, dtype=torch_dtype, precision=precision)
    processor = ctc_processor(layer_norm=config.feat_extract_norm == "layer")
    return CtcCaptioner(model_id=f"random:{arch}", model=model, processor=processor,
                        device=torch_device, dtype=torch_dtype)


RANDOM_SPEAKER_ARCHS = ("base", "large")
SEGMENTATION_SLOTS = 2  # local speakers of microsoft/unispeech-sat-base-plus-sd


def unispeech_sat_config(arch: str, **extra: Any) -> Any:
    from transformers import UniSpeechSatConfig

    if arch == "base":
        return UniSpeechSatConfig(use_weighted_layer_sum=True, **extra)
    if arch == "large":
        return UniSpeechSatConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                  intermediate_size=4096, feat_extract_norm="layer",
                                  do_stable_layer_norm=True, conv_bias=True,
                                  use_weighted_layer_sum=True, **extra)
    raise ValueError(f"unknown architecture {arch!r}; choose from "
                     f"{', '.join(RANDOM_SPEAKER_ARCHS)}")



def random_speaker_models(arch: str, *, device: str = "auto", dtype: str = "auto",
                          precision: str = "fp32",
                          seed: int = 0) -> tuple[FrameSegmenter, XVectorEmbedder]:
    """(segmenter, embedder) of a full-size architecture with random weights."""
    from transformers import UniSpeechSatForAudioFrameClassification, UniSpeechSatForXVector

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype)
    torch.manual_seed(seed)
    seg_config = unispeech_sat_config(arch, num_labels=SEGMENTATION_SLOTS)
    seg_config._attn_implementation = "sdpa"
    seg: Any = built_on(torch_device, UniSpeechSatForAudioFrameClassification, seg_config)
    seg = apply_precision(seg.to(device=torch_device, dtype=torch_dtype).eval(),
                          device=torch_device, dtype=torch_dtype, precision=precision)
    xv_config = unispeech_sat_config(arch)
    xv_config._attn_implementation = "sdpa"
    xv: Any = built_on(torch_device, UniSpeechSatForXVector, xv_config)
    xv = apply_precision(xv.to(device=torch_device, dtype=torch_dtype).eval(),
                         device=torch_device, dtype=torch_dtype, precision=precision)
    extractor = feature_extractor(layer_norm=seg_config.feat_extract_norm == "layer")
    segmenter = FrameSegmenter(model_id=f"random:unispeech-sat-{arch}-sd", model=seg,
                               processor=extractor, device=torch_device, dtype=torch_dtype)
    embedder = XVectorEmbedder(model_id=f"random:unispeech-sat-{arch}-sv", model=xv,
                               processor=extractor, device=torch_device, dtype=torch_dtype)
    return segmenter, embedder


# The label order of the SUPERB keyword spotting set the checkpoint was fine-tuned on.
SPEECH_COMMANDS_LABELS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                          "_silence_", "_unknown_")
SEW_CONV_DIM = (64, 128, 128, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512)
SEW_CONV_KERNEL = (10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1)
SEW_CONV_STRIDE = (5, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
MBART50_SPM_PIECES = 250_000  # sentencepiece pieces before the fairseq offset and language codes



def sewd_mid_keyword_config() -> Any:
    from transformers import SEWDConfig

    labels = dict(enumerate(SPEECH_COMMANDS_LABELS))
    # Generic PretrainedConfig fields (the typed config signature leaves them out).
    head: dict[str, Any] = {"num_labels": len(labels), "id2label": labels,
                            "label2id": {v: k for k, v in labels.items()}}
    return SEWDConfig(
        hidden_size=512, num_hidden_layers=24, num_attention_heads=8, intermediate_size=2048,
        conv_dim=SEW_CONV_DIM, conv_kernel=SEW_CONV_KERNEL, conv_stride=SEW_CONV_STRIDE,
        conv_bias=False, feat_extract_norm="group", squeeze_factor=2,
        max_position_embeddings=512, position_buckets=256, share_att_key=True,
        relative_attention=True, pos_att_type=("p2c", "c2p"), norm_rel_ebd="layer_norm",
        num_conv_pos_embeddings=31, num_conv_pos_embedding_groups=16,
        classifier_proj_size=256, use_weighted_layer_sum=False, **head,
    )


def random_spotter(*, device: str = "auto", dtype: str = "auto", seed: int = 0,
                   precision: str = "fp32") -> KeywordSpotter:
    """A KeywordSpotter of full-size SEW-D mid with random weights (nothing downloaded)."""
    from transformers import SEWDForSequenceClassification

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype)
    torch.manual_seed(seed)
    config = sewd_mid_keyword_config()
    config._attn_implementation = "eager"
    model: Any = built_on(torch_device, SEWDForSequenceClassification, config)
    model = apply_precision(model.to(device=torch_device, dtype=torch_dtype).eval(),
                            device=torch_device, dtype=torch_dtype, precision=precision)
    return KeywordSpotter(model_id="random:sew-d-mid", model=model,
                          feature_extractor=feature_extractor(layer_norm=False),
                          device=torch_device, dtype=torch_dtype)


def mbart50_sized_tokenizer() -> Any:
    """An mBART-50 tokenizer with the real vocabulary size and language-token ids."""
    from transformers import MBart50Tokenizer

    # sentencepiece order (<unk>, <s>, </s>, pieces...); MBart50Tokenizer re-orders it the
    # fairseq way and appends the 52 language codes and <mask>.
    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    pieces += [(f"▁p{i}", -10.0) for i in range(MBART50_SPM_PIECES - 3)]
    return MBart50Tokenizer(vocab=pieces)


def xlsr_en_to_15_config(vocab_size: int) -> Any:
    from transformers import MBartConfig, SpeechEncoderDecoderConfig, Wav2Vec2Config

    encoder = Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
        add_adapter=True, adapter_kernel_size=3, adapter_stride=2, num_adapter_layers=3,
        output_hidden_size=1024,
    )
    decoder_role: dict[str, Any] = {"is_decoder": True, "add_cross_attention": True}
    decoder = MBartConfig(
        vocab_size=vocab_size, d_model=1024, encoder_layers=12, decoder_layers=12,
        encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
        decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
        activation_function="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
        **decoder_role,
    )
    config = SpeechEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 2
    config.pad_token_id = 1
    config.eos_token_id = 2
    return config


def random_translator(*, device: str = "auto", dtype: str = "auto", precision: str = "fp32",
                      seed: int = 0) -> SpeechTranslator:
    """A SpeechTranslator of the full-size en-to-15 architecture with random weights."""
    from transformers import SpeechEncoderDecoderModel

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype)
    tokenizer = mbart50_sized_tokenizer()
    config = xlsr_en_to_15_config(len(tokenizer))
    torch.manual_seed(seed)
    model: Any = SpeechEncoderDecoderModel(config=config)
    model = apply_precision(model.to(device=torch_device, dtype=torch_dtype).eval(),
                            device=torch_device, dtype=torch_dtype, precision=precision)
    return SpeechTranslator(model_id="random:xls-r-300m-en-to-15", model=model,
                            feature_extractor=feature_extractor(layer_norm=True),
                            tokenizer=tokenizer, device=torch_device, dtype=torch_dtype)
