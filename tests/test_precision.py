"""--precision: dynamic int8 quantisation through the real loading code, for every task."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import speechlike_audio
from tiny_speaker_models import build_tiny_segmenter, build_tiny_xvector
from tiny_task_models import build_tiny_keyword_model, build_tiny_translation_model

from harken.app.config import ComputeConfig, HarkenConfig
from harken.app.tasks.loader import ModelLoader
from harken.models.captions import CtcCaptioner
from harken.models.diarization import FrameSegmenter
from harken.models.errors import DeviceError
from harken.models.keywords import KeywordSpotter
from harken.models.loading import precision_of, resolve_precision
from harken.models.speakers import XVectorEmbedder
from harken.models.translation import SpeechTranslator

CPU = torch.device("cpu")


def _quantised(model: torch.nn.Module) -> list[str]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return [name for name, m in model.named_modules() if isinstance(m, DynamicLinear)]


def test_auto_is_int8_on_cpu_and_fp32_on_cuda() -> None:
    assert resolve_precision(CPU, "auto") == "int8"
    assert resolve_precision(torch.device("cuda"), "auto") == "fp32"  # no GPU needed
    assert resolve_precision(CPU, "auto", dtype=torch.bfloat16) == "fp32"
    assert resolve_precision(CPU, "fp32") == "fp32"


def test_int8_where_it_cannot_run_names_the_fix() -> None:
    with pytest.raises(DeviceError, match="--precision fp32"):
        resolve_precision(torch.device("cuda"), "int8")
    with pytest.raises(DeviceError, match="--dtype float32"):
        resolve_precision(CPU, "int8", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision(CPU, "int4")


def test_captions_int8_loads_quantised_and_stays_close_to_fp32(
        tiny_ctc_dirs: dict[str, Path]) -> None:
    folder = str(tiny_ctc_dirs["hubert"])
    fp32 = CtcCaptioner.from_pretrained(folder, device="cpu", precision="fp32")
    int8 = CtcCaptioner.from_pretrained(folder, device="cpu")  # auto: int8 on CPU
    assert precision_of(fp32.model) == "float32"
    assert not _quantised(fp32.model)
    names = _quantised(int8.model)
    assert names
    assert all("encoder" in n or n.endswith("lm_head") for n in names)
    window = speechlike_audio(1.0)
    want, got = fp32.encode([window])[0], int8.encode([window])[0]
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    assert not np.array_equal(got, want)  # the int8 kernels ran
    assert np.abs(np.exp(got).sum(-1) - 1).max() < 1e-4  # still log-probabilities


def test_speaker_models_keep_their_heads_float(tmp_path: Path) -> None:
    sv = str(build_tiny_xvector(tmp_path / "sv"))
    embedder = XVectorEmbedder.from_pretrained(sv, device="cpu", precision="int8")
    segmenter = FrameSegmenter.from_pretrained(str(build_tiny_segmenter(tmp_path / "sd")),
                                               device="cpu", precision="int8")
    for model in (embedder.model, segmenter.model):
        names = _quantised(model)
        assert names
        assert all("encoder" in n for n in names)
    clip = speechlike_audio(2.0)
    vector = embedder.embed([clip])[0]  # the TDNN runs its Linear weight as a conv kernel
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    features = embedder.encode([clip])[0]
    pooled = embedder.pool(features, np.ones((features.shape[0], 1), np.float32))[0]
    assert np.dot(pooled / np.linalg.norm(pooled), vector) == pytest.approx(1.0, abs=1e-4)
    activity = segmenter.encode([clip])[0]
    assert activity.shape[1] == segmenter.num_speakers
    assert np.isfinite(activity).all()


def test_keywords_and_translation_int8_through_the_config(tmp_path: Path) -> None:
    keywords = build_tiny_keyword_model(tmp_path / "kw")
    translation = build_tiny_translation_model(tmp_path / "tr")
    config = HarkenConfig(compute=ComputeConfig(device_type="cpu", precision="int8"),
                          keywords={"enabled": True, "model": str(keywords)},
                          translation={"languages": ["de"], "model": str(translation)})
    loader = ModelLoader()
    spotter = asyncio.run(loader.keywords(config))
    translator = asyncio.run(loader.translation(config))
    assert isinstance(spotter, KeywordSpotter)
    assert isinstance(translator, SpeechTranslator)
    assert _quantised(spotter.model)
    decoder = [n for n in _quantised(translator.model) if n.startswith("decoder.")]
    assert decoder
    assert any(n.endswith("lm_head") for n in decoder)
    probs = spotter.encode([speechlike_audio(1.0)])[0]
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    out = translator.translate(speechlike_audio(1.0), translator.languages(["de"]))
    assert out[0].token_ids
    assert out[0].token_ids[0] == translator.languages(["de"])[0].token_id

    fp32 = HarkenConfig(compute=ComputeConfig(device_type="cpu", precision="fp32"),
                        keywords={"enabled": True, "model": str(keywords)})
    assert not _quantised(asyncio.run(ModelLoader().keywords(fp32)).model)
