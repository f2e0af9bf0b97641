"""engine.audio: blocks, conversion, sanitizing, levels, streaming resampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from audio_gen import SR, peak_frequency, tone

from harken.engine.audio import (
    LEVEL_FLOOR_DBFS,
    AudioBlock,
    StreamResampler,
    level_dbfs,
    sanitize,
    to_mono_float32,
)


def test_audio_block_end_duration_and_frozen() -> None:
    block = AudioBlock(stream="mic", start=3200, samples=np.zeros(1600, dtype=np.float32))
    assert block.end == 4800
    assert block.duration == pytest.approx(0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        block.start = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("dtype", "full_scale"),
    [(np.int16, 32768), (np.int32, 2**31), (np.uint8, None), (np.float64, None)],
)
def test_to_mono_float32_scales_ints_and_mixes_channels(dtype: type, full_scale: int) -> None:
    if dtype is np.uint8:
        stereo = np.array([[128, 255], [0, 128]], dtype=np.uint8)
        expected = np.array([(0 + 127 / 128) / 2, (-1 + 0) / 2], dtype=np.float32)
    elif dtype is np.float64:
        stereo = np.array([[0.5, -0.5], [1.0, 0.0]], dtype=np.float64)
        expected = np.array([0.0, 0.5], dtype=np.float32)
    else:
        stereo = np.array([[full_scale // 2, 0], [-full_scale, -full_scale]], dtype=dtype)
        expected = np.array([0.25, -1.0], dtype=np.float32)
    out = to_mono_float32(stereo)
    assert out.dtype == np.float32
    assert out.shape == (2,)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_to_mono_float32_mono_and_bad_shapes() -> None:
    np.testing.assert_allclose(to_mono_float32(np.array([16384], dtype=np.int16)), [0.5])
    np.testing.assert_allclose(to_mono_float32(np.array([[0.25]], dtype=np.float32)), [0.25])
    with pytest.raises(ValueError, match="frames"):
        to_mono_float32(np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="unsupported"):
        to_mono_float32(np.array(["a"]))


def test_sanitize_replaces_nonfinite_and_clips() -> None:
    x = np.array([0.5, np.nan, np.inf, -np.inf, 2.0, -3.0], dtype=np.float32)
    out, bad = sanitize(x)
    assert bad == 3
    np.testing.assert_array_equal(out, [0.5, 0.0, 0.0, 0.0, 1.0, -1.0])
    assert np.isnan(x[1])  # the input is left alone
    clean, none = sanitize(np.array([0.1], dtype=np.float32))
    assert none == 0
    assert clean.dtype == np.float32


def test_level_dbfs() -> None:
    assert level_dbfs(np.zeros(100, dtype=np.float32)) == LEVEL_FLOOR_DBFS
    assert level_dbfs(np.zeros(0, dtype=np.float32)) == LEVEL_FLOOR_DBFS
    assert level_dbfs(np.ones(100, dtype=np.float32)) == pytest.approx(0.0)
    sine = tone(1.0, 1000, 1.0)
    assert level_dbfs(sine) == pytest.approx(-3.01, abs=0.02)
    assert level_dbfs(np.full(10, 1e-9, dtype=np.float32)) == LEVEL_FLOOR_DBFS


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stream_resampler_chunked_keeps_length_and_frequency(rate: int) -> None:
    x = tone(2.0, 440.0, 0.5, rate=rate)
    rs = StreamResampler(in_rate=rate)
    pieces = [rs.process(x[i : i + 777]) for i in range(0, x.size, 777)]
    pieces.append(rs.process(np.zeros(0, dtype=np.float32), last=True))
    y = np.concatenate(pieces)
    assert y.dtype == np.float32
    assert abs(y.size - 2 * SR) <= 2
    assert peak_frequency(y[1000:-1000]) == pytest.approx(440.0, abs=1.0)


def test_stream_resampler_passthrough_at_16k() -> None:
    rs = StreamResampler(in_rate=SR)
    x = tone(0.1, 300, 0.3)
    assert rs.passthrough
    np.testing.assert_array_equal(rs.process(x), x)
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(in_rate=0)
