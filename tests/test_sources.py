"""engine.sources: FileSource on real files of many kinds, MicSource with a fake sounddevice."""

from __future__ import annotations

import asyncio
import importlib.abc
import itertools
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from audio_gen import SR, peak_frequency, tone

from harken.engine.audio import AudioBlock
from harken.engine.sources.file import FileSource
from harken.engine.sources.mic import InputDevice, MicSource, list_input_devices
from harken.models.errors import AudioDeviceError, AudioFileError

BLOCK = 1600  # samples: 0.1 s at 16 kHz
GUARD_S = 30.0  # s: no test may hang


async def collect(src: FileSource | MicSource, limit: int | None = None) -> list[AudioBlock]:
    out: list[AudioBlock] = []
    async with asyncio.timeout(GUARD_S):
        async for block in src.blocks():
            out.append(block)
            if limit is not None and len(out) >= limit:
                break
    return out


async def collect_until_device_error(
    src: MicSource, on_block: Callable[[], None] | None = None
) -> list[AudioBlock]:
    """Blocks until the source raises AudioDeviceError (which it must, within GUARD_S)."""
    out: list[AudioBlock] = []
    try:
        async with asyncio.timeout(GUARD_S):
            async for block in src.blocks():
                out.append(block)
                if on_block is not None:
                    on_block()
    except AudioDeviceError:
        return out
    raise AssertionError("the source ended without AudioDeviceError")


def check_contiguous(blocks: Sequence[AudioBlock]) -> None:
    pos = 0
    for b in blocks:
        assert b.start == pos
        assert b.samples.dtype == np.float32
        assert b.samples.ndim == 1
        pos = b.end
    assert all(b.samples.size == BLOCK for b in blocks[:-1])


async def read_file(path: Path, **kwargs: Any) -> tuple[FileSource, list[AudioBlock]]:
    async with FileSource(path=path, stream_id="f", **kwargs) as src:
        return src, await collect(src)


# ------------------------------------------------------------------------------ files


@pytest.mark.parametrize(
    ("rate", "fmt", "subtype", "dtype"),
    [
        (8000, "WAV", "PCM_16", "int16"),
        (22050, "FLAC", "PCM_16", "int16"),
        (44100, "OGG", "VORBIS", "float32"),
        (48000, "WAV", "PCM_16", "int16"),
        (48000, "WAV", "FLOAT", "float32"),
        (16000, "FLAC", "PCM_24", "int32"),
    ],
)
async def test_file_resampled_to_16k_mono(
    tmp_path: Path, rate: int, fmt: str, subtype: str, dtype: str
) -> None:
    seconds, freq = 2.0, 1000.0
    mono = tone(seconds, freq, 0.5, rate=rate)
    stereo = np.stack([mono, mono], axis=1)
    data = (stereo * 32767).astype(np.int16) if dtype == "int16" else stereo
    if dtype == "int32":
        data = (stereo * 2**31).astype(np.int32)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, data, rate, format=fmt, subtype=subtype)

    src, blocks = await read_file(path)
    check_contiguous(blocks)
    y = np.concatenate([b.samples for b in blocks])
    assert abs(y.size - seconds * SR) <= BLOCK
    assert src.duration_s == pytest.approx(seconds, abs=0.01)
    assert src.description == f"file {path.name} ({rate} Hz, 2 ch)"
    assert peak_frequency(y[BLOCK:-BLOCK]) == pytest.approx(freq, abs=1.0)
    # Both channels carry the tone, so the mix keeps its level (0.5 peak -> 0.354 RMS).
    assert np.sqrt(np.mean(y[BLOCK:-BLOCK] ** 2)) == pytest.approx(0.354, abs=0.02)


async def test_channels_are_averaged(tmp_path: Path) -> None:
    left = tone(1.0, 440, 0.8, rate=48000)
    path = tmp_path / "left.wav"
    sf.write(path, np.stack([left, np.zeros_like(left), np.zeros_like(left), left], 1), 48000)
    _, blocks = await read_file(path)
    y = np.concatenate([b.samples for b in blocks])[BLOCK:-BLOCK]
    assert np.max(np.abs(y)) == pytest.approx(0.4, abs=0.01)  # (0.8 + 0 + 0 + 0.8) / 4


async def test_nonfinite_samples_are_sanitized_and_counted(tmp_path: Path) -> None:
    x = tone(1.0, 300, 0.5)
    x[100] = np.nan
    x[5000:5010] = np.inf
    x[9000] = -np.inf
    x[12000] = 3.0  # out of range: clipped, not counted
    path = tmp_path / "nan.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    src, blocks = await read_file(path)
    y = np.concatenate([b.samples for b in blocks])
    assert src.nonfinite_samples == 12
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y)) <= 1.0
    assert y[100] == 0.0
    assert y[12000] == 1.0
    assert y.size == x.size


def _write_wav(path: Path, fmt: str = "WAV", seconds: float = 2.0) -> bytes:
    sf.write(path, tone(seconds, 440, 0.5, rate=44100), 44100, format=fmt, subtype="PCM_16")
    return path.read_bytes()


def _empty(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _text(p: Path) -> Path:
    p.write_text("this is not audio, just a text file renamed to .wav\n" * 20)
    return p


def _truncated_wav(p: Path) -> Path:
    data = _write_wav(p)
    p.write_bytes(data[: len(data) // 2])
    return p


def _truncated_flac(p: Path) -> Path:
    data = _write_wav(p, "FLAC")
    p.write_bytes(data[: len(data) // 2])
    return p


def _header_only(p: Path) -> Path:
    data = _write_wav(p)
    p.write_bytes(data[:20])
    return p


def _zero_frames(p: Path) -> Path:
    sf.write(p, np.zeros((0, 1), dtype=np.float32), SR)
    return p


def _directory(p: Path) -> Path:
    p.mkdir()
    return p


@pytest.mark.parametrize(
    ("make", "name", "match"),
    [
        (lambda p: p, "missing.wav", "not found"),
        (_directory, "folder.wav", "directory"),
        (_empty, "empty.wav", "empty"),
        (_text, "text.wav", "not an audio file"),
        (_truncated_wav, "cut.wav", "truncated"),
        (_truncated_flac, "cut.flac", "truncated"),
        (_header_only, "header.wav", "not an audio file"),
        (_zero_frames, "zero.wav", "no audio frames"),
    ],
)
async def test_bad_files_raise_clear_audio_file_errors(
    tmp_path: Path, make: Callable[[Path], Path], name: str, match: str
) -> None:
    path = make(tmp_path / name)
    with pytest.raises(AudioFileError, match=match) as info:
        await read_file(path)
    assert str(path) in str(info.value)


async def test_ten_minute_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    rate, minutes = 8000, 10
    chunk = (tone(10.0, 440, 0.3, rate=rate) * 32767).astype(np.int16)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for _ in range(minutes * 6):
            f.write(chunk)
    total = 0
    pos = 0
    tracemalloc.start()
    try:
        async with FileSource(path=path, stream_id="f", realtime=False) as src:
            async with asyncio.timeout(GUARD_S):
                async for block in src.blocks():
                    assert block.start == pos
                    pos = block.end
                    total += block.samples.size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(total - minutes * 60 * SR) <= BLOCK
    # The resampled file is 38 MB of float32; streaming keeps a few chunks at most.
    assert peak < 8_000_000, f"peak traced memory {peak} bytes"


async def test_realtime_paces_to_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "one.wav"
    sf.write(path, tone(1.0, 440, 0.3), SR)
    t0 = time.monotonic()
    _, blocks = await read_file(path, realtime=True)
    elapsed = time.monotonic() - t0
    assert len(blocks) == 10
    assert 0.8 <= elapsed <= 2.5


async def test_blocks_needs_async_with(tmp_path: Path) -> None:
    src = FileSource(path=tmp_path / "x.wav", stream_id="f", realtime=False)
    with pytest.raises(RuntimeError, match="async with"):
        await collect(src)
    with pytest.raises(ValueError, match="block_s"):
        FileSource(path=tmp_path / "x.wav", stream_id="f", block_s=0)


# -------------------------------------------------------------------- fake sounddevice


class FakeStatus:
    def __init__(self, overflow: bool = False) -> None:
        self.input_overflow = overflow

    def __bool__(self) -> bool:
        return self.input_overflow


class FakePortAudioError(Exception):
    pass


class FakeSoundDevice(types.ModuleType):
    """Just enough of sounddevice: devices, defaults, and an InputStream fed by a thread."""

    PortAudioError = FakePortAudioError

    def __init__(self, devices: list[dict[str, Any]], default_input: int = 0) -> None:
        super().__init__("sounddevice")
        self.devices = devices
        self.default = types.SimpleNamespace(device=[default_input, -1])
        self.signal: np.ndarray = np.zeros((48000, 2), dtype=np.float32)
        self.n_blocks = 1_000_000  # blocks delivered before the fake "device" stops
        self.pace_s = 0.0  # pause between callbacks (0: as fast as possible)
        self.then = "finish"  # after n_blocks: "finish" (stream aborts) or "hang"
        self.overflow_every = 0
        self.gate_after: int | None = None  # deliver this many, then wait for `gate`
        self.gate = threading.Event()
        self.opened: dict[str, Any] = {}

    def query_devices(self) -> list[dict[str, Any]]:
        return self.devices

    def InputStream(self, **kwargs: Any) -> FakeStream:  # mirrors sounddevice's name
        self.opened = kwargs
        return FakeStream(self, **kwargs)


class FakeStream:
    def __init__(self, sd: FakeSoundDevice, **kw: Any) -> None:
        self.sd = sd
        self.kw = kw
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.closed = False

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        sd, n = self.sd, self.kw["blocksize"]
        for i in range(sd.n_blocks):
            if sd.gate_after is not None and i == sd.gate_after:
                while not sd.gate.wait(0.01):
                    if self.stop_event.is_set():
                        return
            if self.stop_event.is_set():
                return
            start = (i * n) % (sd.signal.shape[0] - n)
            overflow = bool(sd.overflow_every) and i % sd.overflow_every == 0
            self.kw["callback"](sd.signal[start : start + n], n, None, FakeStatus(overflow))
            if sd.pace_s:
                time.sleep(sd.pace_s)
        if sd.then == "finish":
            self.kw["finished_callback"]()

    def abort(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)

    def close(self) -> None:
        self.closed = True


DEVICES = [
    {"name": "HDMI out", "index": 0, "max_input_channels": 0, "default_samplerate": 48000.0},
    {"name": "USB Mic", "index": 1, "max_input_channels": 2, "default_samplerate": 48000.0},
    {"name": "Built-in Mic", "index": 2, "max_input_channels": 1, "default_samplerate": 44100.0},
]


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch) -> FakeSoundDevice:
    sd = FakeSoundDevice([dict(d) for d in DEVICES], default_input=1)
    mono = tone(1.0, 1000, 0.5, rate=48000)
    sd.signal = np.stack([mono, mono], axis=1)
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    return sd


def test_list_input_devices_with_fake(fake_sd: FakeSoundDevice) -> None:
    devices = list_input_devices()
    assert devices == [
        InputDevice(
            index=1, name="USB Mic", channels=2, default_samplerate=48000.0, is_default=True
        ),
        InputDevice(
            index=2, name="Built-in Mic", channels=1, default_samplerate=44100.0, is_default=False
        ),
    ]


async def test_mic_blocks_are_resampled_and_mono(fake_sd: FakeSoundDevice) -> None:
    fake_sd.pace_s = 0.002
    async with MicSource(device=None, stream_id="mic") as src:
        assert fake_sd.opened["samplerate"] == 48000
        assert fake_sd.opened["channels"] == 2
        assert fake_sd.opened["dtype"] == "float32"
        assert src.description == "microphone USB Mic (48000 Hz, 2 ch)"
        blocks = await collect(src, limit=20)
    check_contiguous(blocks)
    y = np.concatenate([b.samples for b in blocks])
    assert peak_frequency(y[BLOCK:]) == pytest.approx(1000.0, abs=10.0)
    assert src.dropped_blocks == 0


async def test_mic_device_by_name_and_errors(fake_sd: FakeSoundDevice) -> None:
    fake_sd.pace_s = 0.002
    async with MicSource(device="built-in", stream_id="mic") as src:
        assert fake_sd.opened["device"] == 2
        assert fake_sd.opened["samplerate"] == 44100
        blocks = await collect(src, limit=3)
    assert len(blocks) == 3
    assert all(b.samples.size == BLOCK for b in blocks)
    with pytest.raises(AudioDeviceError, match="harken devices"):
        async with MicSource(device=7, stream_id="mic"):
            pass
    with pytest.raises(AudioDeviceError, match="harken devices"):
        async with MicSource(device="Studio", stream_id="mic"):
            pass
    with pytest.raises(AudioDeviceError, match="ambiguous"):
        async with MicSource(device="mic", stream_id="mic"):
            pass
    fake_sd.devices = [DEVICES[0]]
    with pytest.raises(AudioDeviceError, match="no audio input device"):
        async with MicSource(device=None, stream_id="mic"):
            pass


async def test_full_queue_drops_counts_and_keeps_the_clock(fake_sd: FakeSoundDevice) -> None:
    fake_sd.n_blocks = 40
    fake_sd.then = "hang"
    fake_sd.overflow_every = 10
    async with MicSource(
        device=1, stream_id="mic", max_queued_blocks=5, stall_timeout_s=0.3
    ) as src:
        await asyncio.sleep(0.5)  # the consumer lags while 40 blocks arrive
        blocks = await collect_until_device_error(src)  # then the fake device hangs
    assert src.dropped_blocks == 35
    assert src.overflows == 4
    # The 5 kept blocks (0.5 s) are the first ones, delivered whole and in order.
    check_contiguous(blocks)
    assert blocks[-1].end == 5 * BLOCK


async def test_mic_drop_gap_then_later_audio_lands_at_wall_time(
    fake_sd: FakeSoundDevice,
) -> None:
    fake_sd.n_blocks, fake_sd.gate_after, fake_sd.then = 35, 30, "hang"
    async with MicSource(
        device=1, stream_id="mic", max_queued_blocks=20, stall_timeout_s=0.5
    ) as src:
        await asyncio.sleep(0.3)  # a burst of 30 blocks (3 s): 20 kept, 10 dropped
        assert src.dropped_blocks == 10
        # 5 more blocks arrive once the consumer has caught up.
        got = await collect_until_device_error(src, on_block=fake_sd.gate.set)
    assert src.dropped_blocks == 10
    before = [b for b in got if b.start < 3 * SR]
    after = [b for b in got if b.start >= 3 * SR]
    check_contiguous(before)  # the 2 s kept before the drop, complete
    assert before[-1].end == 2 * SR
    # The first block after the drop sits where the device's clock was: 30 blocks = 3.0 s.
    assert after
    assert after[0].start == 3 * SR
    assert all(b.start == a.end for a, b in itertools.pairwise(after))


async def test_mic_stream_that_dies_raises(fake_sd: FakeSoundDevice) -> None:
    fake_sd.n_blocks = 5
    fake_sd.pace_s = 0.002
    fake_sd.then = "finish"
    async with MicSource(device=1, stream_id="mic") as src:
        with pytest.raises(AudioDeviceError, match="stopped delivering audio"):
            await collect(src)


async def test_mic_stall_raises(fake_sd: FakeSoundDevice) -> None:
    fake_sd.n_blocks = 3
    fake_sd.then = "hang"
    async with MicSource(device=1, stream_id="mic", stall_timeout_s=0.3) as src:
        t0 = time.monotonic()
        with pytest.raises(AudioDeviceError, match="unplugged"):
            await collect(src)
        assert time.monotonic() - t0 < 3.0


class _NoPortAudio(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")  # what sounddevice raises
        return None


def test_missing_portaudio_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoPortAudio(), *sys.meta_path])
    with pytest.raises(AudioDeviceError, match="libportaudio2") as info:
        list_input_devices()
    assert "--input FILE" in str(info.value)
    assert "brew install portaudio" in str(info.value)


def test_importing_sources_does_not_import_sounddevice() -> None:
    code = "import sys, harken.engine.sources.mic; print('sounddevice' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


async def test_a_header_below_speech_rates_is_refused(tmp_path: Path) -> None:
    """16,000 samples that claim 1 Hz would be 4.4 hours once resampled to 16 kHz."""
    path = tmp_path / "one_hz.wav"
    sf.write(str(path), np.zeros(16_000, dtype=np.int16), 1, subtype="PCM_16")
    with pytest.raises(AudioFileError, match="claims 1 Hz"):
        async with FileSource(path=path, stream_id="s"):
            pass


async def test_a_device_or_fifo_is_not_an_audio_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo):
        with pytest.raises(AudioFileError, match="not a regular file"):
            async with FileSource(path=path, stream_id="s"):
                pass
