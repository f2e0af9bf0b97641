"""An audio file (any libsndfile format, rate and channels) as 16 kHz mono float32 blocks.

`block.start` is the stream clock in samples at SAMPLE_RATE; for a file it advances by
exactly the samples emitted (no gaps, no overlaps).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import soundfile as sf

from harken.engine.audio import (
    AudioBlock,
    Float32Array,
    StreamResampler,
    sanitize,
    to_mono_float32,
)
from harken.engine.sources.blocks import DEFAULT_BLOCK_S, Blocker, InputFormat, check_block_s
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import AudioFileError

_EMPTY = np.zeros(0, dtype=np.float32)

MIN_FILE_RATE_HZ = 4_000  # Hz: below telephone band; the satellites' limit too
FILE_READ_CHUNK_S = 1.0  # s of input audio read per blocking call (bounds memory per read)
# libsndfile reports a header size larger than the bytes present as "data : N (should be M)".
_WAV_SIZE_MISMATCH = re.compile(r"^\s*data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers put a placeholder length in the header; that is not truncation.
_PLACEHOLDER_SIZE_MIN = 0x7FFF_0000  # bytes




class FileSource(InputFormat):
    """Streams an audio file (any libsndfile format, rate and channel count) as AudioBlocks.

    Reads FILE_READ_CHUNK_S at a time in a worker thread, so memory stays bounded for files
    of any length. With `realtime=True` each block is released when its last sample would
    have been captured live (paced against one monotonic start time, so no drift builds up).
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike[str],
        stream_id: str,
        block_s: float = DEFAULT_BLOCK_S,
        realtime: bool = False,
    ) -> None:
        self.path = Path(path)
        self.stream_id = stream_id
        self.block_s = block_s
        self.realtime = realtime
        self._block_samples = check_block_s(block_s)
        self._file: sf.SoundFile | None = None
        self._started = False
        self.nonfinite_samples = 0  # NaN/inf samples (counted after the mono mix) set to 0
        self._rate = 0
        self._channels = 0
        self._frames = 0

    @property
    def duration_s(self) -> float:
        """Duration from the file header (valid once opened)."""
        return self._frames / self._rate if self._rate else 0.0

    @property
    def description(self) -> str:
        if not self._rate:
            return f"file {self.path.name}"
        return f"file {self.path.name} ({self._rate} Hz, {self._channels} ch)"

    async def __aenter__(self) -> Self:
        self._file = await asyncio.to_thread(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> sf.SoundFile:
        p = self.path
        if not p.exists():
            raise AudioFileError(f"audio file not found: {p}; check the path")
        if p.is_dir():
            raise AudioFileError(f"{p} is a directory; pass an audio file (WAV, FLAC, OGG...)")
        if not p.is_file():  # a FIFO, /dev/zero, a socket: no header to trust, maybe no end
            raise AudioFileError(f"{p} is not a regular file; save the audio to a file first")
        try:
            size = p.stat().st_size
        except OSError as e:
            raise AudioFileError(f"cannot read {p}: {e}") from e
        if size == 0:
            raise AudioFileError(f"audio file {p} is empty (0 bytes); record or export it again")
        try:
            f = sf.SoundFile(str(p))
        except (sf.SoundFileError, RuntimeError, OSError) as e:
            raise AudioFileError(
                f"{p} is not an audio file libsndfile can read ({e}); "
                "convert it to WAV or FLAC, e.g. `sox in.xyz -r 16000 -c 1 out.wav`"
            ) from e
        try:
            self._validate(f)
        except AudioFileError:
            f.close()
            raise
        self._rate, self._channels, self._frames = int(f.samplerate), int(f.channels), f.frames
        return f

    def _validate(self, f: sf.SoundFile) -> None:
        p = self.path
        if f.samplerate <= 0 or f.channels <= 0:
            raise AudioFileError(f"{p} has an invalid header ({f.samplerate} Hz, {f.channels} ch)")
        if f.samplerate < MIN_FILE_RATE_HZ:
            # No speech is recorded this way; upsampling such a header to 16 kHz would turn a
            # small file into hours of audio.
            raise AudioFileError(f"{p} claims {f.samplerate} Hz; speech needs at least "
                                 f"{MIN_FILE_RATE_HZ} Hz: fix its header or resample it, e.g. "
                                 "`sox in.wav -r 16000 out.wav`")
        if f.frames <= 0:
            raise AudioFileError(f"{p} holds no audio frames (header only); export it again")
        info = f.extra_info or ""
        m = _WAV_SIZE_MISMATCH.search(info)
        if m is not None:
            declared, present = int(m.group(1)), int(m.group(2))
            if present < declared < _PLACEHOLDER_SIZE_MIN:
                raise AudioFileError(
                    f"{p} is truncated: its header promises {declared} bytes of audio but only "
                    f"{present} are there; copy or export the file again"
                )
        if "lacks an end-of-stream bit" in info:
            raise AudioFileError(
                f"{p} is truncated (the last Ogg page is incomplete); copy or export it again"
            )

    def _read_chunk(self, f: sf.SoundFile, resampler: StreamResampler) -> tuple[Float32Array, bool]:
        """Blocking: read, mix, sanitize and resample one chunk; returns (samples, at_end)."""
        frames = max(1, round(FILE_READ_CHUNK_S * self._rate))
        try:
            data = f.read(frames, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, OSError) as e:
            pos = f"{f.tell() / self._rate:.2f} s" if self._rate else "the start"
            raise AudioFileError(
                f"{self.path} is corrupt or truncated: reading failed near {pos} ({e}); "
                "copy or export the file again"
            ) from e
        at_end = data.shape[0] < frames
        mono, bad = sanitize(to_mono_float32(data))
        self.nonfinite_samples += bad
        out = resampler.process(mono, last=at_end)
        # Resampling can overshoot full scale a little; keep the [-1, 1] promise.
        np.clip(out, -1.0, 1.0, out=out)
        return out, at_end

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        """Yield the file as AudioBlocks; the last block may be shorter than block_s."""
        f = self._file
        if f is None:
            raise RuntimeError("FileSource.blocks() needs `async with FileSource(...) as src`")
        if self._started:
            raise RuntimeError("FileSource.blocks() can be iterated only once")
        self._started = True
        resampler = StreamResampler(in_rate=self._rate)
        blocker = Blocker(stream_id=self.stream_id, block_samples=self._block_samples)
        t0: float | None = None
        at_end = False
        while not at_end:
            chunk, at_end = await asyncio.to_thread(self._read_chunk, f, resampler)
            ready = blocker.push(chunk)
            if at_end:
                ready += blocker.flush()
            for block in ready:
                if self.realtime:
                    if t0 is None:
                        t0 = time.monotonic()
                    delay = t0 + block.end / SAMPLE_RATE - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                yield block
