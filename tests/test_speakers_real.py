"""Clustering and identification with a TRAINED speaker encoder on real speech.

Resemblyzer (dev-only, `make measure-setup`) behind the speaker stage's Embedder protocol
(tests/resemblyzer_embedder.py); the recordings come from ../shared/audio. What is checked
is issue 11's target: online clustering within 0.05 DER of offline clustering with the
oracle number of speakers on the same embeddings, with the thresholds Harken's table holds
for this encoder; and an unknown voice left unnamed more often with the margin than without.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest
from oracle_diarization import SHARED, der, offline, online, prepare, read

from harken.models.calibration import GENERIC, KNOWN
from harken.models.clustering import ClusteringOptions, Voiceprint, name_voice

HAVE_RESEMBLYZER = all(importlib.util.find_spec(m) is not None
                       for m in ("resemblyzer", "librosa"))
needs_resemblyzer = pytest.mark.skipif(
    not HAVE_RESEMBLYZER, reason="resemblyzer/librosa are not installed (dev-only: run "
                                 "`make measure-setup`)")
needs_shared = pytest.mark.skipif(
    not (SHARED / "diarization").is_dir(),
    reason=f"{SHARED} is not available on this machine (or set HARKEN_SHARED_AUDIO)")
pytestmark = [needs_resemblyzer, pytest.mark.slow]


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    from resemblyzer_embedder import ResemblyzerEmbedder

    return ResemblyzerEmbedder()


def test_the_adapter_pools_partials_like_resemblyzer_embeds_an_utterance(embedder) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    window = (0.1 * rng.standard_normal(16_000 * 3)).astype(np.float32)
    feats = embedder.encode([window])[0]
    assert feats.shape == (embedder.geometry.num_frames(len(window)), 256)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    uniform = embedder.pool(feats, np.ones((len(feats), 1), dtype=np.float32))[0]
    mean = feats.mean(axis=0)
    np.testing.assert_allclose(uniform, mean / np.linalg.norm(mean), atol=1e-5)
    short = embedder.encode([window[:8000]])[0]  # 0.5 s: shorter than one 1.6 s partial
    assert short.shape[0] == 0
    assert np.isnan(embedder.pool(short, np.ones((0, 2), dtype=np.float32))).all()


def _resemblyzer_options() -> ClusteringOptions:
    known = KNOWN["resemblyzer"].values
    return replace(ClusteringOptions(), **{k: known.get(k, GENERIC[k])  # type: ignore[arg-type]
                                           for k in ("tau_active", "rho_update", "delta_new")})


@needs_shared
@pytest.mark.parametrize(("clip", "rttm"), [("pyannote_sample/sample.wav",
                                             "pyannote_sample/sample.rttm"),
                                            ("ami_dev00/dev00.flac", "ami_dev00/dev00.rttm")])
def test_online_clustering_is_within_005_der_of_offline(embedder, clip: str,  # type: ignore[no-untyped-def]
                                                        rttm: str) -> None:
    from oracle_diarization import load_rttm

    d = SHARED / "diarization"
    prepared = prepare(clip, read(d / clip), load_rttm(d / rttm), embedder)
    options = _resemblyzer_options()
    turns, labels = online(prepared, options)
    on = der(prepared, turns, collar=0.25)["der"]
    off = der(prepared, offline(prepared, options), collar=0.25)["der"]
    assert on <= off + 0.05, (on, off)
    assert labels == len(prepared.speakers)


@needs_shared
def test_the_margin_leaves_more_unknown_voices_unnamed(embedder) -> None:  # type: ignore[no-untyped-def]
    files = sorted((SHARED / "speakers" / "librispeech_test_other").glob("*/*.flac"))
    who = [f.parent.name for f in files]
    emb = embedder.embed([read(f) for f in files])
    known = KNOWN["resemblyzer"].values
    threshold = known["threshold"]

    def false_names(margin: float) -> tuple[int, int]:
        wrong = right = 0
        for out in sorted(set(who)):
            prints = [Voiceprint(name=s, embedding=emb[[i for i, w in enumerate(who)
                                                         if w == s][:2]].mean(axis=0))
                      for s in sorted(set(who)) if s != out]
            for i, w in enumerate(who):
                name = name_voice(emb[i], prints, threshold=threshold, margin=margin).name
                if w == out:
                    wrong += name is not None
                elif i not in [j for j, v in enumerate(who) if v == w][:2]:
                    right += name == w
        return wrong, right

    plain, with_margin = false_names(0.0), false_names(known["margin"])
    assert with_margin[0] < plain[0]  # fewer strangers named
    assert with_margin[1] >= 0.9 * plain[1]  # enrolled people still named
