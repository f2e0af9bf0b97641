"""A microphone (PortAudio through sounddevice) as 16 kHz mono float32 blocks.

The clock also advances over blocks dropped because the consumer lagged: a drop leaves a gap
in the clock, so timestamps stay true to wall time instead of silently drifting.
`sounddevice` is imported lazily, so importing this module works without PortAudio.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Self

import numpy as np

from harken.engine.audio import (
    AudioBlock,
    StreamResampler,
    sanitize,
    to_mono_float32,
)
from harken.engine.sources.blocks import DEFAULT_BLOCK_S, Blocker, InputFormat, check_block_s
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import AudioDeviceError

_EMPTY = np.zeros(0, dtype=np.float32)

DEFAULT_MAX_QUEUED_BLOCKS = 50  # mic blocks waiting for the consumer (5 s at 0.1 s)
DEFAULT_STALL_TIMEOUT_S = 2.0  # s without any mic block before the device counts as gone




@dataclass(frozen=True, slots=True, kw_only=True)
class InputDevice:
    index: int
    name: str
    channels: int  # native input channels
    default_samplerate: float  # Hz
    is_default: bool


def _import_sounddevice() -> ModuleType:
    try:
        return importlib.import_module("sounddevice")
    except OSError as e:
        raise AudioDeviceError(
            f"the PortAudio library is missing ({e}); install it with "
            "`apt-get install libportaudio2` (Debian/Ubuntu) or `brew install portaudio` "
            "(macOS). File input still works without it: `--input FILE`"
        ) from e
    except ImportError as e:
        raise AudioDeviceError(
            f"the sounddevice package is missing ({e}); `pip install sounddevice`. "
            "File input still works without it: `--input FILE`"
        ) from e


def _default_input_index(sd: ModuleType) -> int:
    # sd.default.device is an (input, output) pair; a single value means both.
    dev = sd.default.device
    value = dev if isinstance(dev, (int, str)) else dev[0]
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1  # a name or nothing: no default index to mark


def list_input_devices() -> list[InputDevice]:
    """Every device with at least one input channel, as PortAudio reports it."""
    sd = _import_sounddevice()
    try:
        devices = list(sd.query_devices())
    except sd.PortAudioError as e:
        raise AudioDeviceError(f"PortAudio could not list audio devices: {e}") from e
    default_index = _default_input_index(sd)
    out: list[InputDevice] = []
    for i, d in enumerate(devices):
        channels = int(d.get("max_input_channels", 0))
        if channels <= 0:
            continue
        index = int(d.get("index", i))
        out.append(
            InputDevice(
                index=index,
                name=str(d.get("name", f"device {index}")),
                channels=channels,
                default_samplerate=float(d.get("default_samplerate", SAMPLE_RATE)),
                is_default=index == default_index,
            )
        )
    return out


def _resolve_device(device: int | str | None, devices: list[InputDevice]) -> InputDevice:
    if not devices:
        raise AudioDeviceError(
            "no audio input device found; connect a microphone (and check its permissions), "
            "or read a file instead: `--input FILE`"
        )
    hint = "list input devices with `harken devices`"
    if device is None:
        for d in devices:
            if d.is_default:
                return d
        return devices[0]  # no system default input: the first input device will do
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        index = int(device)
        for d in devices:
            if d.index == index:
                return d
        raise AudioDeviceError(f"no input device with index {index}; {hint}")
    wanted = device.strip().lower()
    exact = [d for d in devices if d.name.lower() == wanted]
    if exact:
        return exact[0]
    partial = [d for d in devices if wanted in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        names = ", ".join(f"{d.index}: {d.name}" for d in partial)
        raise AudioDeviceError(f"input device name {device!r} is ambiguous ({names}); {hint}")
    raise AudioDeviceError(f"no input device named {device!r}; {hint}")


@dataclass(frozen=True, slots=True)
class _Captured:
    data: Any  # (frames, channels) float32 copy made in the PortAudio callback
    overflow: bool
    frames_dropped_before: int  # input frames dropped since the previous queued block


class MicSource(InputFormat):
    """Captures a microphone through PortAudio (sounddevice) as AudioBlocks.

    The stream runs at the device's default rate and native channel count; the PortAudio
    callback only copies each block and hands it to the event loop, where it enters a
    bounded queue (a full queue drops the block and counts it in `dropped_blocks`). Mixing to
    mono and resampling to 16 kHz happen in `blocks()`. The stream clock keeps counting over
    dropped blocks (see the module docstring). `blocks()` raises AudioDeviceError when the
    stream stops on its own or no audio arrives for `stall_timeout_s`.
    """

    def __init__(
        self,
        *,
        device: int | str | None,
        stream_id: str,
        block_s: float = DEFAULT_BLOCK_S,
        max_queued_blocks: int = DEFAULT_MAX_QUEUED_BLOCKS,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    ) -> None:
        if max_queued_blocks < 1:
            raise ValueError(f"max_queued_blocks must be at least 1, got {max_queued_blocks}")
        if not stall_timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be positive, got {stall_timeout_s}")
        self.device = device
        self.stream_id = stream_id
        self.block_s = block_s
        self.max_queued_blocks = max_queued_blocks
        self.stall_timeout_s = stall_timeout_s
        self._block_samples = check_block_s(block_s)
        self.dropped_blocks = 0  # blocks lost because the consumer lagged
        self.overflows = 0  # blocks PortAudio flagged as input overflow (audio lost upstream)
        self.nonfinite_samples = 0
        self._queue: collections.deque[_Captured] = collections.deque()
        self._ready = asyncio.Event()
        self._dropped_frames = 0
        self._finished = False
        self._closing = False
        self._started = False
        self._stream: Any = None
        self._sd: ModuleType | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._input: InputDevice | None = None
        self._rate = 0
        self._channels = 0

    @property
    def description(self) -> str:
        if self._input is None:
            return f"microphone {self.device if self.device is not None else '(default)'}"
        return f"microphone {self._input.name} ({self._rate} Hz, {self._channels} ch)"

    async def __aenter__(self) -> Self:
        sd = _import_sounddevice()
        self._sd = sd
        self._loop = asyncio.get_running_loop()
        dev = _resolve_device(self.device, list_input_devices())
        self._input = dev
        self._rate = round(dev.default_samplerate)
        self._channels = dev.channels
        if self._rate <= 0:
            raise AudioDeviceError(f"input device {dev.name!r} reports no usable sample rate")
        try:
            self._stream = sd.InputStream(
                device=dev.index,
                samplerate=self._rate,
                channels=self._channels,
                dtype="float32",
                blocksize=max(1, round(self.block_s * self._rate)),
                callback=self._callback,
                finished_callback=self._finished_callback,
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError, OSError) as e:
            await self._close_stream()
            raise AudioDeviceError(
                f"cannot open input device {dev.index} ({dev.name!r}): {e}; "
                "check it is connected and not in exclusive use, or list devices with "
                "`harken devices`"
            ) from e
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close_stream()

    async def _close_stream(self) -> None:
        self._closing = True
        stream, self._stream = self._stream, None
        if stream is None or self._sd is None:
            return
        # A device that vanished can fail to stop/close; it is gone either way.
        with contextlib.suppress(self._sd.PortAudioError):
            await asyncio.to_thread(stream.abort)
        with contextlib.suppress(self._sd.PortAudioError):
            await asyncio.to_thread(stream.close)

    # PortAudio thread: copy and hand over, nothing else.
    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        data = indata.copy()
        overflow = bool(getattr(status, "input_overflow", False))
        # RuntimeError: the loop closed while the stream was still delivering.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._enqueue, data, overflow)

    def _finished_callback(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_finished)

    # Event loop side.
    def _enqueue(self, data: Any, overflow: bool) -> None:
        if overflow:
            self.overflows += 1
        if len(self._queue) >= self.max_queued_blocks:
            self.dropped_blocks += 1
            self._dropped_frames += int(data.shape[0])
            return
        self._queue.append(_Captured(data, overflow, self._dropped_frames))
        self._dropped_frames = 0
        self._ready.set()

    def _on_finished(self) -> None:
        self._finished = True
        self._ready.set()

    def _dead_error(self) -> AudioDeviceError:
        name = self._input.name if self._input is not None else str(self.device)
        return AudioDeviceError(
            f"input device {name!r} stopped delivering audio (unplugged or taken by another "
            "program?); reconnect it and restart, or pick another with `harken devices`"
        )

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        """Yield captured audio as AudioBlocks until the source is closed."""
        if self._stream is None:
            raise RuntimeError("MicSource.blocks() needs `async with MicSource(...) as src`")
        if self._started:
            raise RuntimeError("MicSource.blocks() can be iterated only once")
        self._started = True
        resampler = StreamResampler(in_rate=self._rate)
        blocker = Blocker(stream_id=self.stream_id, block_samples=self._block_samples)
        in_frames = 0  # input frames captured so far, dropped ones included
        while True:
            while self._queue:
                item = self._queue.popleft()
                if item.frames_dropped_before:
                    # Finish the audio before the gap, then jump the clock over it.
                    for block in blocker.push(resampler.process(_EMPTY, last=True)):
                        yield block
                    for block in blocker.flush():
                        yield block
                    in_frames += item.frames_dropped_before
                    blocker.skip_to(round(in_frames * SAMPLE_RATE / self._rate))
                    resampler = StreamResampler(in_rate=self._rate)
                in_frames += int(item.data.shape[0])
                mono, bad = sanitize(to_mono_float32(item.data))
                self.nonfinite_samples += bad
                out = resampler.process(mono)
                np.clip(out, -1.0, 1.0, out=out)
                for block in blocker.push(out):
                    yield block
            if self._stream is None:
                return  # closed by __aexit__ while the consumer was iterating
            dead = self._finished and not self._closing
            if not dead:
                self._ready.clear()
                try:
                    await asyncio.wait_for(self._ready.wait(), timeout=self.stall_timeout_s)
                except TimeoutError:
                    dead = not self._queue and not self._closing
            if dead:
                # Deliver what was captured before the device went away, then fail.
                for block in blocker.push(resampler.process(_EMPTY, last=True)):
                    yield block
                for block in blocker.flush():
                    yield block
                raise self._dead_error()
