"""CtcCaptioner: frame geometry, batched encoding, normalisation and greedy decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import speechlike_audio

from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.geometry import FrameGeometry, normalize_window, segment_stats


@pytest.fixture(scope="module")
def captioners(tiny_ctc_dirs: dict[str, Path]) -> dict[str, CtcCaptioner]:
    return {
        arch: CtcCaptioner.from_pretrained(str(path), device="cpu", precision="fp32")
        for arch, path in tiny_ctc_dirs.items()
    }


def test_geometry_matches_the_model_output_lengths(captioners: dict[str, CtcCaptioner]) -> None:
    for captioner in captioners.values():
        geometry = captioner.geometry
        lengths = [0, 399, 400, 719, 720, 8_000, 48_000, 48_399, 48_400]
        expected = captioner.model._get_feat_extract_output_lengths(torch.tensor(lengths))
        assert [geometry.num_frames(n) for n in lengths] == [max(0, int(v)) for v in expected]
    assert captioners["sew-d"].geometry.align_frames == 2  # squeeze_factor
    assert captioners["hubert"].geometry.align_frames == 1
    assert FrameGeometry.from_conv([10, 3], [5, 2]) == FrameGeometry(10, 20, ((10, 5), (3, 2)))


def test_normalize_window_matches_the_feature_extractor(
    captioners: dict[str, CtcCaptioner],
) -> None:
    audio = speechlike_audio(1.0, seed=3) + 0.05
    mean, std = segment_stats(audio)
    ours = normalize_window(audio, mean=mean, std=std)
    extractor = captioners["hubert"].feature_extractor
    theirs = extractor(audio, sampling_rate=SAMPLE_RATE, do_normalize=True).input_values[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_batch_of_ragged_windows_equals_one_by_one(captioners: dict[str, CtcCaptioner]) -> None:
    captioner = captioners["hubert"]
    assert captioner.batchable
    audio = speechlike_audio(2.0, seed=1)
    short, long = audio[:17_000], audio
    batched = captioner.encode([short, long, audio[:300]])
    alone = [captioner.encode([w])[0] for w in (short, long)]
    assert batched[0].shape == (captioner.geometry.num_frames(17_000), captioner.vocab_size)
    assert batched[2].shape == (0, captioner.vocab_size)  # shorter than the receptive field
    for got, want in zip(batched[:2], alone, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("arch", ["data2vec-audio", "sew-d"])
def test_padding_sensitive_models_refuse_ragged_batches(
    arch: str, captioners: dict[str, CtcCaptioner]
) -> None:
    captioner = captioners[arch]
    assert not captioner.batchable
    audio = speechlike_audio(1.0, seed=2)
    with pytest.raises(ValueError, match="equal length"):
        captioner.encode([audio[:9_000], audio])
    equal = captioner.encode([audio, audio[::-1].copy()])
    np.testing.assert_allclose(equal[0], captioner.encode([audio])[0], atol=1e-4)


def test_decode_gives_words_with_monotonic_times_inside_the_window(
    captioners: dict[str, CtcCaptioner],
) -> None:
    captioner = captioners["hubert"]
    audio = speechlike_audio(3.0, seed=0)
    logprobs = captioner.encode([audio])[0]
    start_s = 12.5
    transcript = captioner.decode(logprobs, start_s=start_s)
    assert transcript.words, "random weights still emit letters"
    assert transcript.text.split() == [w.word for w in transcript.words]
    window_end_s = start_s + len(audio) / SAMPLE_RATE
    previous_end = start_s
    for word in transcript.words:
        assert previous_end <= word.start < word.end <= window_end_s
        previous_end = word.end
    assert "<" not in transcript.text  # special tokens are blanks, never text
    assert captioner.decode(logprobs[:0], start_s=0.0).words == ()
