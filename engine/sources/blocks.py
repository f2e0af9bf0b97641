"""Fixed-length blocks on the stream clock, cut from audio that arrives in any chunk size."""

from __future__ import annotations

import math

import numpy as np

from harken.engine.audio import AudioBlock, Float32Array
from harken.models.audio import SAMPLE_RATE

DEFAULT_BLOCK_S = 0.1  # s: block length handed to the VAD
MIN_BLOCK_S = 0.01  # s: shorter blocks cost a task switch per 160 samples
MAX_BLOCK_S = 2.0  # s: longer ones delay every onset by that much


def check_block_s(block_s: float) -> int:
    if not (math.isfinite(block_s) and MIN_BLOCK_S <= block_s <= MAX_BLOCK_S):
        raise ValueError(f"block_s must be between {MIN_BLOCK_S} and {MAX_BLOCK_S} seconds, "
                         f"got {block_s}")
    return round(block_s * SAMPLE_RATE)


class Blocker:
    """Cuts a stream of variable-length chunks into fixed blocks on the stream clock.

    The one block cutter of every source (file, microphone, MQTT satellites): `push` returns
    the whole blocks a chunk completes, `flush` the rest as one short block, and `skip_to`
    moves the clock over lost audio so later blocks keep their true time.
    """

    def __init__(self, *, stream_id: str, block_samples: int) -> None:
        self._stream_id = stream_id
        self._block_samples = block_samples
        self._pending: list[Float32Array] = []
        self._pending_len = 0
        self.position = 0  # stream-clock sample index of the next emitted sample

    def push(self, chunk: Float32Array) -> list[AudioBlock]:
        if chunk.size:
            self._pending.append(chunk)
            self._pending_len += int(chunk.size)
        out: list[AudioBlock] = []
        if self._pending_len < self._block_samples:
            return out
        joined = np.concatenate(self._pending)
        n_full = (joined.size // self._block_samples) * self._block_samples
        for i in range(0, n_full, self._block_samples):
            out.append(self._emit(joined[i : i + self._block_samples]))
        rest = joined[n_full:]
        self._pending = [rest] if rest.size else []
        self._pending_len = int(rest.size)
        return out

    def flush(self) -> list[AudioBlock]:
        """Emit what is left as one short final block."""
        if not self._pending_len:
            return []
        joined = np.concatenate(self._pending)
        self._pending, self._pending_len = [], 0
        return [self._emit(joined)]

    def skip_to(self, position: int) -> None:
        """Advance the clock (never backwards) after audio was lost; call after flush()."""
        self.position = max(self.position, position)

    def _emit(self, samples: Float32Array) -> AudioBlock:
        block = AudioBlock(
            stream=self._stream_id,
            start=self.position,
            samples=np.ascontiguousarray(samples, dtype=np.float32),
        )
        self.position = block.end
        return block


class InputFormat:
    """The rate and channel count a source reads its input at (known once it is open)."""

    _rate = 0
    _channels = 0

    @property
    def sample_rate(self) -> int:
        """The input's own rate in Hz, before resampling to SAMPLE_RATE."""
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels
