"""Full-size architectures with random weights, for benchmarks.

Random weights have the same compute as trained ones, so speed and memory figures hold for
the real checkpoints; accuracy figures do not. The configs copy the published checkpoints'
architecture fields (facebook/hubert-large-ls960-ft and a HuBERT-base CTC model shaped like
facebook/wav2vec2-base-960h), and the processor has the same 32-token LibriSpeech vocabulary.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.loading import resolve_device, resolve_dtype

RANDOM_CTC_ARCHS = ("hubert-base", "hubert-large")

# The character vocabulary of the LibriSpeech-960h CTC checkpoints (blank = <pad>).
LIBRISPEECH_VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ")


def ctc_processor(*, layer_norm: bool) -> Any:
    """A real Wav2Vec2Processor with the LibriSpeech character vocabulary."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(LIBRISPEECH_VOCAB)}))
        tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), unk_token="<unk>", pad_token="<pad>",
                                         bos_token="<s>", eos_token="</s>",
                                         word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE,
                                         padding_value=0.0, do_normalize=True,
                                         return_attention_mask=layer_norm)
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


def random_ctc(arch: str, *, device: str = "auto", dtype: str = "auto",
               seed: int = 0) -> CtcCaptioner:
    """A CtcCaptioner of a full-size architecture with random weights (nothing downloaded)."""
    from transformers import HubertForCTC

    config = hubert_ctc_config(arch)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(torch_device, dtype)
    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    model: Any = HubertForCTC(config)
    model = model.to(device=torch_device, dtype=torch_dtype).eval()
    processor = ctc_processor(layer_norm=config.feat_extract_norm == "layer")
    return CtcCaptioner(model_id=f"random:{arch}", model=model, processor=processor,
                        device=torch_device, dtype=torch_dtype)
