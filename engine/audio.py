"""Audio blocks and the small pure helpers every source shares.

Everything downstream of a source sees 16 kHz mono float32 in [-1, 1]. Positions are sample
indices on the stream clock (samples since the stream's first sample, at SAMPLE_RATE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soxr

from harken.models.audio import SAMPLE_RATE

Float32Array = npt.NDArray[np.float32]

LEVEL_FLOOR_DBFS = -120.0  # dBFS: level reported for digital silence
_RESAMPLE_QUALITY = "HQ"  # soxr quality: transparent for speech, cheap enough for real time


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioBlock:
    """A run of 16 kHz mono float32 samples starting at `start` on the stream clock."""

    stream: str
    start: int  # samples at SAMPLE_RATE since the stream's first sample
    samples: Float32Array
    #: The stream's last block (it may be empty): the engine ends the stream after it, its
    #: open segment is finalised and its state freed; a later block with the same id starts
    #: a new stream. Sources whose streams come and go (MQTT satellites) set it.
    last: bool = False

    @property
    def end(self) -> int:
        """Sample index one past the last sample."""
        return self.start + int(self.samples.shape[0])

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return int(self.samples.shape[0]) / SAMPLE_RATE


def to_mono_float32(data: npt.NDArray[np.generic]) -> Float32Array:
    """Convert (frames,) or (frames, channels) int/uint8/float audio to mono float32.

    Integer samples are scaled to [-1, 1] (uint8 is offset binary, centred on 128);
    channels are averaged.
    """
    arr = np.asarray(data)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"audio must be shaped (frames,) or (frames, channels), got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        out = (arr.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(arr.dtype, np.signedinteger):
        scale = float(-np.iinfo(arr.dtype).min)  # 32768 for int16: full scale maps to -1.0
        out = arr.astype(np.float32) / np.float32(scale)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32, copy=False)
    else:
        raise ValueError(f"unsupported audio sample type {arr.dtype}; use int or float samples")
    if out.ndim == 2:
        out = out.mean(axis=1, dtype=np.float32) if out.shape[1] != 1 else out[:, 0]
    return np.ascontiguousarray(out, dtype=np.float32)


def sanitize(x: Float32Array) -> tuple[Float32Array, int]:
    """Replace NaN/inf with 0 and clip to [-1, 1]; return (clean copy, count replaced)."""
    finite = np.isfinite(x)
    bad = int(x.size - np.count_nonzero(finite))
    out = np.where(finite, x, np.float32(0.0)) if bad else x.copy()
    np.clip(out, -1.0, 1.0, out=out)
    return out.astype(np.float32, copy=False), bad


def level_dbfs(x: Float32Array) -> float:
    """RMS level in dBFS (a full-scale square wave is 0 dBFS), floored at LEVEL_FLOOR_DBFS."""
    if x.size == 0:
        return LEVEL_FLOOR_DBFS
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms <= 0.0:
        return LEVEL_FLOOR_DBFS
    return max(LEVEL_FLOOR_DBFS, 20.0 * float(np.log10(rms)))


class StreamResampler:
    """Streaming mono resampler from `in_rate` to SAMPLE_RATE (passthrough at 16 kHz).

    Keeps filter state across chunks, so consecutive chunks resample like one signal.
    Pass `last=True` with the final chunk to flush the filter's tail.
    """

    def __init__(self, *, in_rate: int) -> None:
        if in_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {in_rate} Hz")
        self.in_rate = int(in_rate)
        self._stream: soxr.ResampleStream | None = None
        if self.in_rate != SAMPLE_RATE:
            self._stream = soxr.ResampleStream(
                self.in_rate, SAMPLE_RATE, 1, dtype="float32", quality=_RESAMPLE_QUALITY
            )

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def process(self, chunk: Float32Array, last: bool = False) -> Float32Array:
        """Resample one mono float32 chunk; output length varies by the filter delay."""
        x = np.ascontiguousarray(chunk, dtype=np.float32)
        if self._stream is None:
            return x
        out = self._stream.resample_chunk(x, last=last)
        return np.ascontiguousarray(out, dtype=np.float32)
