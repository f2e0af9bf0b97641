"""The speaker models, tiny random UniSpeech-SAT checkpoints loaded through the real path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_speaker_models import build_tiny_segmenter, build_tiny_xvector, voice

from harken.models.clustering import l2_normalize
from harken.models.diarization import FrameSegmenter
from harken.models.errors import ModelNotFoundError, UnsupportedModelError
from harken.models.speakers import XVectorEmbedder


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speaker_models")
    return {"sv": build_tiny_xvector(root / "sv"), "sd": build_tiny_segmenter(root / "sd")}


@pytest.fixture(scope="module")
def embedder(dirs: dict[str, Path]) -> XVectorEmbedder:
    return XVectorEmbedder.from_pretrained(str(dirs["sv"]), device="cpu", precision="fp32")


def test_pooling_with_uniform_weights_is_the_models_own_embedding(
        embedder: XVectorEmbedder) -> None:
    clip = voice(3.0, pitch_hz=140)
    features = embedder.encode([clip])[0]
    assert features.shape == (embedder.feature_frames(len(clip)), 64)
    pooled = embedder.pool(features, np.ones((features.shape[0], 1)))
    np.testing.assert_allclose(l2_normalize(pooled[0]), embedder.embed([clip])[0], atol=1e-5)


def test_weighted_pooling_counts_only_the_weighted_frames(embedder: XVectorEmbedder) -> None:
    clip = np.concatenate([voice(2.0, pitch_hz=110), voice(2.0, pitch_hz=300, seed=3)])
    features = embedder.encode([clip])[0]
    half = features.shape[0] // 2
    mask = np.zeros((features.shape[0], 2))
    mask[:half, 0] = 1.0
    mask[half:, 1] = 1.0
    both = embedder.pool(features, mask)
    np.testing.assert_allclose(both[0], embedder.pool(features[:half], np.ones((half, 1)))[0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[1], embedder.pool(features[half:],
                                                      np.ones((len(features) - half, 1)))[0],
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(both[0], both[1])
    empty = embedder.pool(features, np.zeros((features.shape[0], 1)))
    assert np.isnan(empty).all()  # no weight, no embedding


def test_batched_windows_match_single_windows(dirs: dict[str, Path],
                                              embedder: XVectorEmbedder) -> None:
    seg = FrameSegmenter.from_pretrained(str(dirs["sd"]), device="cpu", precision="fp32")
    a, b = voice(2.0, pitch_hz=120), voice(2.0, pitch_hz=250, seed=1)
    together = seg.encode([a, b])
    assert seg.num_speakers == 2
    assert together[0].shape == (seg.geometry.num_frames(len(a)), 2)
    assert ((together[0] > 0) & (together[0] < 1)).all()
    np.testing.assert_allclose(together[1], seg.encode([b])[0], atol=1e-5)
    feats = embedder.encode([a, b])
    np.testing.assert_allclose(feats[1], embedder.encode([b])[0], atol=1e-4)
    assert seg.encode([np.zeros(100, np.float32)])[0].shape == (0, 2)  # shorter than a frame


def test_loading_errors_name_the_fix(dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="--speaker-model"):
        XVectorEmbedder.from_pretrained(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(UnsupportedModelError, match="diarization"):
        FrameSegmenter.from_pretrained(str(dirs["sv"]), device="cpu")  # an x-vector head
    with pytest.raises(UnsupportedModelError, match="speaker"):
        XVectorEmbedder.from_pretrained(str(dirs["sd"]), device="cpu")
    with pytest.raises(ValueError, match="at least 1 s"):
        XVectorEmbedder.from_pretrained(str(dirs["sv"]), device="cpu").embed(
            [np.zeros(2000, np.float32)])
