"""Audio from satellites over MQTT: Hermes `audioFrame` WAV chunks, one stream per site.

    async with SatelliteSource(settings=MqttSettings(host="hub"), client_id="harken-hub-audio")
            as source:
        async for block in source.blocks():   # block.stream is the satellite's site id
            ...

A satellite (Rhasspy, or anything speaking Hermes) publishes small WAV files on
`hermes/audioServer/<siteId>/audioFrame`. The site is what the filter's `+` matched. Each
site gets its own resampler and stream clock (samples received, at 16 kHz), so the engine
runs one VAD and one set of task stages per site. Blocks the engine cannot take in time are
dropped and counted (`dropped_blocks`), leaving a gap in that site's clock.

Anyone on the broker may publish there, so nothing a frame holds can end the run or grow
memory without bound (`SiteLimits`): a frame that fails in any way is rejected alone
(counted by reason in `rejections`, logged at a bounded rate); at most `max_sites` sites are
live at once (others are refused until one leaves), optionally only those on an allowlist;
each site has a frame-rate and a byte-rate limit; a site silent for `idle_evict_s` is
evicted: its open audio is flushed, its stream ended (the engine finalises the open segment
and frees the stream's state) and only its clock position is remembered (in a bounded
table) so that a returning satellite's timestamps carry on in wall time.

A satellite that stops sending mid-utterance would leave its segment open, so after
`idle_flush_s` without frames the site's last partial block and `flush_silence_s` of
silence are fed to the engine (counted in `idle_flushes`; the clock advances by that much).
The connection is retried with backoff if the broker goes away.

Floods (docs/mqtt.md, "Floods"): received frames wait in a bounded fair queue, one family per
live site (engine/mqtt/inbox.py); the event loop only admits and rate-limits a frame, one
decoder thread does the rest (SatelliteSource's docstring); with an allowlist each allowed
site is subscribed on its own, so frames under other names never arrive. Without one, each
admitted site is also subscribed by its exact topic on a second connection (`<client
id>-sites`), so the broker queues its frames apart from the wildcard's flood; the move from
the wildcard to that subscription follows engine/mqtt/handover.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import io
import logging
import math
import queue
import random
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiomqtt
import numpy as np
from paho.mqtt.reasoncodes import ReasonCode

from harken.engine.audio import (
    AudioBlock,
    Float32Array,
    StreamResampler,
    sanitize,
    to_mono_float32,
)
from harken.engine.mqtt.client import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    Backoff,
    MqttSettings,
    open_client,
)
from harken.engine.mqtt.guard import Rejections, TokenBucket
from harken.engine.mqtt.handover import Handover, Phase
from harken.engine.mqtt.inbox import DISCARD, OTHER, Inbox
from harken.engine.mqtt.topics import (
    HERMES_AUDIO_FILTER,
    QOS_AT_LEAST_ONCE,
    SiteNames,
    check_filter,
    satellite_id,
    site_filters,
    site_from_topic,
)
from harken.engine.sources.blocks import Blocker
from harken.models.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

DEFAULT_BLOCK_S = 0.1  # s of audio per block handed to the engine
MAX_QUEUED_BLOCKS = 300  # blocks waiting for the engine, all sites together (30 s at 0.1 s)
IDLE_FLUSH_S = 1.0  # s without frames from a site before its open audio is flushed
FLUSH_SILENCE_S = 1.0  # s of silence appended then, longer than the VAD hangover
MIN_RATE_HZ, MAX_RATE_HZ = 4_000, 192_000
MAX_CHANNELS = 8
MAX_SITES = 16  # satellites live at once
IDLE_EVICT_S = 30.0  # s without frames before a site is evicted (its stream ends)
MAX_FRAMES_PER_S = 200.0  # per site; Hermes satellites send ~16-32 (1024 or 512 samples)
MAX_BYTES_PER_S = 1_000_000.0  # per site; 48 kHz stereo 32-bit PCM is 384 kB/s
MAX_AUDIO_RATIO = 2.0  # s of audio per s of wall time per site; a satellite streams at 1
RATE_BURST_S = 2.0  # s of the rate limits a site may use up at once (a reconnect backlog)
MAX_FRAME_BYTES = 512 * 1024  # one frame; Hermes frames are a few kB
CLOCK_MEMORY = 1024  # evicted sites whose clock position is remembered (oldest forgotten)
MAX_PENDING_FRAMES_PER_SITE = 64  # frames waiting for the decoder (4 s of 1024 at 16 kHz)
MAX_PENDING_BYTES_PER_SITE = 2 * 1024 * 1024  # their payloads: 2 s at MAX_BYTES_PER_S
INBOX_MESSAGES = 128  # received frames waiting to be admitted, per live site (and new sites)
INBOX_BYTES = 2 * 1024 * 1024  # their payloads, per live site (and new sites)
DECODER_JOIN_TIMEOUT_S = 5.0  # s: at exit, how long to wait for the decoder thread
# Own subscriptions (no allowlist): a live site gets one after it streamed this long at most
# about real time (a satellite streams at 1; a flooder's frames come faster even when the
# broker drops most of them) with none of its frames refused for this long, at most this
# many a second (burst max_sites); it loses it when a frame of it is refused (malformed,
# rate limits), it is evicted, or the connection stays down this long.
OWN_AFTER_S = 2.0  # s
OWN_MAX_AUDIO_RATIO = 1.25  # s of audio per s since admission
OWN_COOLDOWN_S = 30.0  # s after a demotion before a site may have its own again
# Demoted only for a sustained flood: this many frames refused for rate within
# OWN_DEMOTE_WINDOW_S. A single odd frame (which anyone may publish on a satellite's topic)
# must not push a real satellite back onto the flooded wildcard; malformed frames never do.
OWN_DEMOTE_REFUSALS = 20
OWN_DEMOTE_WINDOW_S = 1.0  # s
OWN_SUBSCRIBES_PER_S = 2.0
SUBACK_FAILURE = 0x80  # SUBACK codes from here on refuse the subscription (MQTT 3.1.1 and 5)
_PCM_DTYPES: dict[int, np.dtype[np.integer]] = {
    1: np.dtype(np.uint8), 2: np.dtype("<i2"), 4: np.dtype("<i4")}


class MalformedFrame(ValueError):
    """An audio frame that is not a usable PCM WAV chunk."""


def decode_wav(payload: bytes) -> tuple[Float32Array, int]:
    """(mono float32 samples, sample rate) of one WAV chunk; raises MalformedFrame only.

    The payload comes from anyone on the broker: whatever the wave module or numpy raise on
    it (wave.Error, EOFError, but also RuntimeError for a chunk size past the end, ...)
    becomes a MalformedFrame.
    """
    try:
        return _decode_wav(payload)
    except MalformedFrame:
        raise
    except Exception as exc:  # untrusted bytes: any failure means "not a usable frame"
        detail = str(exc) or type(exc).__name__
        raise MalformedFrame(f"not a PCM WAV chunk ({detail})") from exc


def _decode_wav(payload: bytes) -> tuple[Float32Array, int]:
    if len(payload) > MAX_FRAME_BYTES:
        raise MalformedFrame(f"{len(payload)} bytes; a frame may have at most "
                             f"{MAX_FRAME_BYTES}")
    try:
        with wave.open(io.BytesIO(payload), "rb") as w:
            rate, channels = w.getframerate(), w.getnchannels()
            width, frames = w.getsampwidth(), w.getnframes()
            data = w.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise MalformedFrame(f"not a PCM WAV chunk ({exc or 'truncated header'})") from exc
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise MalformedFrame(f"sample rate {rate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise MalformedFrame(f"{channels} channels; 1-{MAX_CHANNELS} are supported")
    if width not in (1, 2, 3, 4):
        raise MalformedFrame(f"{width * 8}-bit samples are not supported")
    if frames == 0:
        raise MalformedFrame("the chunk holds no samples")
    if len(data) != frames * channels * width:
        raise MalformedFrame(f"truncated: the header says {frames} frames, the chunk holds "
                             f"{len(data) // (channels * width)}")
    if width == 3:  # 24-bit: widen to int32, keeping the sign in the top byte
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((raw.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = raw
        samples = wide.view("<i4").reshape(-1, channels)
    else:
        samples = np.frombuffer(data, dtype=_PCM_DTYPES[width]).reshape(-1, channels)
    return to_mono_float32(samples), rate


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteLimits:
    """What satellites may cost, whoever publishes on the audio topics."""

    max_sites: int = MAX_SITES
    allow: frozenset[str] = frozenset()  # site ids that may stream; empty: any
    idle_evict_s: float = IDLE_EVICT_S
    max_frames_per_s: float = MAX_FRAMES_PER_S
    max_bytes_per_s: float = MAX_BYTES_PER_S
    # Seconds of audio per second of wall time: bytes alone let a peer send 8-bit 4 kHz audio
    # (250 s per MB) whose decoding and resampling would starve every other site.
    max_audio_ratio: float = MAX_AUDIO_RATIO
    burst_s: float = RATE_BURST_S

    def __post_init__(self) -> None:
        if self.max_sites < 1:
            raise ValueError(f"max_sites must be >= 1, got {self.max_sites}")
        for name in ("idle_evict_s", "max_frames_per_s", "max_bytes_per_s", "max_audio_ratio",
                     "burst_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")


class _Rejected(Exception):
    """One frame refused; `reason` is a fixed code (the counter key)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class _Dsp:
    """A site's audio state. Only the decoder touches it (its thread once the source runs),
    so frames, flushes and evictions of a site apply in the order they were handed over."""

    rate: int
    resampler: StreamResampler
    blocker: Blocker  # cuts the site's audio into blocks on its own stream clock
    audio: TokenBucket  # seconds of audio
    frame_samples: int = 0  # 16 kHz length of the last frame: the estimate for a lost one


@dataclass
class _Site:
    """A site's admission state, on the event loop."""

    id: str
    raw: str  # the name it published under (its topic level), for Hermes siteId
    frames: TokenBucket
    bytes: TokenBucket
    last_frame: float
    since: float  # when it was admitted
    dsp: _Dsp | None = None  # set by the decoder at the site's first frame that decodes
    needs_flush: bool = False
    pending: int = 0  # frames handed to the decoder and not back yet
    pending_bytes: int = 0
    skipped: int = 0  # frames dropped since the last one handed over (a gap on the clock)
    decode_dropped: int = 0
    topic: str | None = None  # the exact topic of its first frame that decoded
    own: Handover | None = None  # its own subscription, while it has one
    no_own: bool = False  # the broker refused its subscription
    own_after: float = 0.0  # no own subscription before then (it was demoted)
    # times of its latest frames refused for rate (OWN_DEMOTE_REFUSALS at most)
    refused: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=OWN_DEMOTE_REFUSALS))
    audio_s: float = 0.0  # seconds of audio decoded since it was admitted


@dataclass(frozen=True, slots=True)
class _Frame:
    site: _Site
    topic: str
    payload: bytes
    now: float
    skipped: int  # frames of this site dropped just before this one


@dataclass(frozen=True, slots=True)
class _Flush:
    site: _Site
    silence: int  # samples of silence after the open audio


@dataclass(frozen=True, slots=True)
class _Evict:
    site: _Site
    now: float


@dataclass(frozen=True, slots=True)
class _Stop:
    """Handed over last by stop(): when it comes back, everything before it is queued."""


_Job = _Frame | _Flush | _Evict | _Stop


@dataclass(slots=True)
class _Done:
    """What the decoder made of one job, applied on the event loop."""

    job: _Job
    blocks: list[AudioBlock] = dataclasses.field(default_factory=list)
    last: AudioBlock | None = None  # an evicted site's final block: never dropped
    reason: str | None = None  # a rejected frame: its counter key ...
    detail: str = ""  # ... and what to log
    nonfinite: int = 0
    seconds: float = 0.0  # a decoded frame's length


def _payload(message: aiomqtt.Message) -> bytes:
    """A frame's bytes (anything but bytes from the network is an empty, malformed frame)."""
    raw = message.payload
    return bytes(raw) if isinstance(raw, (bytes, bytearray)) else b""


class SatelliteSource:
    """An engine source (async context manager with `blocks()`) fed by MQTT audio frames.

    The event loop does only what is cheap per frame: the site look-up, admission and the
    frame and byte rate limits. Decoding, the audio-rate limit, resampling and block cutting
    run on one decoder thread, fed by a bounded queue (`max_pending_frames` per site and in
    all): a frame that does not fit is dropped and counted (`decode_dropped`, and per site in
    its stream's stats), and the site's clock skips the frame's estimated length. One thread
    for every site keeps each site's frames in order. Before `async with` (tests, replaying
    captured frames) the decoder runs inline, the same code on the caller's thread.
    """

    def __init__(self, *, settings: MqttSettings, client_id: str,
                 topic_filter: str = HERMES_AUDIO_FILTER, block_s: float = DEFAULT_BLOCK_S,
                 max_queued_blocks: int = MAX_QUEUED_BLOCKS, idle_flush_s: float = IDLE_FLUSH_S,
                 flush_silence_s: float = FLUSH_SILENCE_S,
                 limits: SiteLimits | None = None,
                 max_pending_frames: int = MAX_PENDING_FRAMES_PER_SITE,
                 inbox_messages: int = INBOX_MESSAGES,
                 backoff_initial_s: float = BACKOFF_INITIAL_S,
                 backoff_max_s: float = BACKOFF_MAX_S,
                 own_subscriptions: bool = True,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 names: SiteNames | None = None,
                 on_subscribed: Callable[[], None] | None = None) -> None:
        """`names`: where the name each site published under is recorded (by site id) when
        one of its frames decodes, for the MQTT sink's Hermes `siteId`. `on_subscribed`:
        called once, when the first subscription is in place (frames are heard from then
        on; a command line says it is ready)."""
        if not 0.01 <= block_s <= 2.0:
            raise ValueError(f"block_s must be between 0.01 and 2.0 seconds, got {block_s}")
        if max_queued_blocks < 1 or idle_flush_s <= 0 or flush_silence_s < 0 or \
                max_pending_frames < 1:
            raise ValueError("max_queued_blocks >= 1, idle_flush_s > 0, flush_silence_s >= 0 "
                             "and max_pending_frames >= 1 are required")
        self.settings = settings
        self.client_id = client_id
        self.topic_filter = check_filter(topic_filter)
        self.limits = limits if limits is not None else SiteLimits()
        # Allowed names as the stream ids their frames get ("Living Room" streams as
        # Living_Room-<hash>, engine/mqtt/topics.py).
        self._allowed_ids = frozenset(satellite_id(site) for site in self.limits.allow)
        self._block = round(block_s * SAMPLE_RATE)
        self._max_queued = max_queued_blocks
        self._max_pending = max_pending_frames
        self._max_pending_all = max_pending_frames * self.limits.max_sites
        self._idle_flush_s = idle_flush_s
        self._flush_silence = round(flush_silence_s * SAMPLE_RATE)
        self._backoff = Backoff(initial_s=backoff_initial_s, max_s=backoff_max_s, rng=rng)
        self._own_backoff = Backoff(initial_s=backoff_initial_s, max_s=backoff_max_s, rng=rng)
        self._clock = clock
        self._names = names
        # Counters.
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.frames = 0
        self.dropped_blocks = 0
        self.decode_dropped = 0  # frames dropped because the decoder was behind
        self.nonfinite_samples = 0
        self.idle_flushes = 0
        self.evicted_sites = 0
        self.rejections = Rejections(logger=log, what="satellite audio frame")
        # Incoming messages: one bounded queue per live site, one for all other sites,
        # served in turn, so a flood under made-up site names (or on one site) cannot drop
        # or delay the frames of another live site (engine/mqtt/inbox.py).
        self.inbox = Inbox(classify=self._family, max_messages=inbox_messages,
                           max_bytes=INBOX_BYTES, max_families=self.limits.max_sites + 4,
                           kinds=("audio", "audio_new", OTHER))
        self._sites: dict[str, _Site] = {}
        # Own subscriptions of admitted sites (without an allowlist, which narrows the
        # subscription itself; and only for a filter whose one `+` is the site).
        levels = self.topic_filter.split("/")
        self.own_enabled = own_subscriptions and not self.limits.allow and \
            levels.count("+") == 1 and "#" not in levels
        self._handovers: dict[str, Handover] = {}  # exact topic -> its hand-over, <= max_sites
        self._own_changed = asyncio.Event()  # the wanted subscriptions changed
        self._own_connected = False
        self._own_bucket = TokenBucket.full(rate=OWN_SUBSCRIBES_PER_S,
                                            burst=float(self.limits.max_sites), now=clock())
        self.own_inbox = Inbox(classify=self._own_family, max_messages=inbox_messages,
                               max_bytes=INBOX_BYTES, max_families=self.limits.max_sites + 4,
                               kinds=("audio", OTHER))
        self.own_connects = 0
        self.own_subscribes = 0
        self.own_unsubscribes = 0
        self.own_deferred = 0  # promotions put off by OWN_SUBSCRIBES_PER_S
        self.own_refused = 0  # subscriptions the broker refused
        self.own_demoted = 0  # sites that lost theirs for hitting a rate limit
        self.own_released = 0  # ... or because the connection stayed down
        self.own_stale = 0  # frames on it for a site that no longer has one (dropped)
        self.handovers = 0
        self.handover_timeouts = 0
        self.duplicates_dropped = 0  # frames both connections delivered, beyond the first
        # Evicted sites: (clock position, when) so a returning site's clock carries on.
        # The decoder's: it knows where a site's clock ended.
        self._clocks: collections.OrderedDict[str, tuple[int, float]] = \
            collections.OrderedDict()
        self._queue: collections.deque[AudioBlock] = collections.deque()
        self._ready = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._on_subscribed = on_subscribed
        self._pending = 0  # frames with the decoder, all sites
        self._stopping = False
        self._stopped = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Bounded by the pending limits: frames at most max_pending_frames per site, a flush
        # only after a frame, an eviction once per site, one stop.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def description(self) -> str:
        return f"MQTT audio frames {self.topic_filter} from {self.settings.address}"

    @property
    def sites(self) -> list[str]:
        """Live sites: those that sent a frame that decoded and were not evicted since."""
        return [site.id for site in self._sites.values() if site.dsp is not None]

    @property
    def malformed_frames(self) -> int:
        return self.rejections.by_reason.get("malformed", 0)

    @property
    def rejected_frames(self) -> int:
        """Frames refused for any reason (malformed, rate, site limits, errors)."""
        return self.rejections.total

    @property
    def last_malformed(self) -> str | None:
        return self.rejections.last

    def stream_counters(self, stream: str) -> dict[str, int]:
        """For a stream's stats: the source's drops by reason, and this site's own."""
        site = self._sites.get(stream)
        return {**self.inbox.counters(), "decode_dropped": self.decode_dropped,
                "site_decode_dropped": site.decode_dropped if site is not None else 0,
                **self.own_counters()}

    def own_counters(self) -> dict[str, int]:
        """The own subscriptions' figures (docs/mqtt.md, "Floods")."""
        return {"own_sites": len(self._handovers), "own_connects": self.own_connects,
                "own_subscribes": self.own_subscribes,
                "own_unsubscribes": self.own_unsubscribes, "own_deferred": self.own_deferred,
                "own_refused": self.own_refused, "own_demoted": self.own_demoted,
                "own_released": self.own_released, "own_stale": self.own_stale,
                "handovers": self.handovers, "handover_timeouts": self.handover_timeouts,
                "duplicates_dropped": self.duplicates_dropped + self.inbox.discarded + sum(
                    handover.duplicates for handover in self._handovers.values()),
                **self.own_inbox.counters("own_incoming")}

    async def wait_connected(self) -> None:
        """Returns once subscribed: frames published from now on are received."""
        await self._subscribed.wait()

    def stop(self) -> None:
        """Ends `blocks()` after what is queued, with every site's last partial block."""
        if self._stopping:
            return
        self._stopping = True
        for site in self._sites.values():
            self._submit(_Flush(site=site, silence=0))
        self._submit(_Stop())

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._decode_loop, name="mqtt-audio-decode",
                                        daemon=True)
        self._thread.start()
        stack = contextlib.AsyncExitStack()
        tg = await stack.enter_async_context(asyncio.TaskGroup())
        self._tasks = [tg.create_task(self._link(), name="mqtt-audio-link"),
                       tg.create_task(self._watch_idle(), name="mqtt-audio-idle")]
        if self.own_enabled:
            self._tasks.append(tg.create_task(self._own_link(), name="mqtt-audio-sites"))
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        stack, self._stack = self._stack, None
        thread, self._thread = self._thread, None
        try:
            if stack is not None:
                for task in self._tasks:  # both run until cancelled
                    task.cancel()
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            if thread is not None:
                self._jobs.put(None)  # after every job handed over: the thread ends
                await asyncio.to_thread(thread.join, DECODER_JOIN_TIMEOUT_S)

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        while True:
            while not self._queue and not self._stopped:
                self._ready.clear()
                await self._ready.wait()
            if not self._queue:
                return
            yield self._queue.popleft()

    # ---------------------------------------------------------------- network

    def _family(self, topic: str) -> str:
        """The inbox family of a message: runs in the socket reader, so only look-ups."""
        handover = self._handovers.get(topic)
        if handover is not None and handover.phase is Phase.OWN:
            return DISCARD  # its own subscription delivers it: a duplicate, never queued
        raw_site = site_from_topic(self.topic_filter, topic)
        if raw_site is None:
            return OTHER
        site_id = satellite_id(raw_site)
        return f"audio:{site_id}" if site_id in self._sites else "audio_new"

    def _own_family(self, topic: str) -> str:
        """The inbox family on the own subscriptions' connection: one per subscribed topic."""
        return f"audio:{topic}" if topic in self._handovers else OTHER

    async def _link(self) -> None:
        while not self._stopping:
            try:
                async with open_client(self.settings, client_id=self.client_id,
                                       inbox=self.inbox) as client:
                    # With an allowlist, one subscription per site: frames published under
                    # other names never reach us, however fast they come. QoS 1: frames a
                    # satellite sends at QoS 1 are then never dropped by the broker for a
                    # QoS 0 flood on our connection (it drops QoS 0 messages first).
                    for topic_filter in site_filters(self.topic_filter, self.limits.allow):
                        await client.subscribe(topic_filter, qos=QOS_AT_LEAST_ONCE)
                    self._backoff.reset()
                    self.connects += 1
                    self.reconnects = self.connects - 1
                    self.connected = True
                    self._subscribed.set()
                    if self.connects == 1 and self._on_subscribed is not None:
                        self._on_subscribed()
                    # One wait per batch: the library's iterator costs a task and a few
                    # loop turns per message, slower than its reader under a flood.
                    async for first in client.messages:
                        self._receive(first)
                        for message in self.inbox.drain():
                            self._receive(message)
            except aiomqtt.MqttError as exc:
                if self.connected:
                    log.warning("MQTT audio connection to %s lost (%s); reconnecting",
                                self.settings.address, exc)
                elif self.connects == 0 and self._backoff.attempt == 0:
                    log.warning("cannot connect to the MQTT broker at %s for audio (%s); "
                                "retrying with backoff", self.settings.address, exc)
            finally:
                self.connected = False
                self._subscribed.clear()
            await asyncio.sleep(self._backoff.next_delay())

    async def _own_link(self) -> None:
        """The admitted sites' own subscriptions, on a connection of their own."""
        while not self._stopping:
            try:
                async with open_client(self.settings, client_id=f"{self.client_id}-sites",
                                       inbox=self.own_inbox) as client:
                    self._own_backoff.reset()
                    self.own_connects += 1
                    self._own_connected = True
                    reader = asyncio.create_task(self._own_read(client))
                    sync = asyncio.create_task(self._own_sync(client))
                    try:
                        done, _ = await asyncio.wait([reader, sync],
                                                     return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        reader.cancel()
                        sync.cancel()
                        await asyncio.wait([reader, sync])
                    for task in done:  # each runs until the connection fails
                        error = None if task.cancelled() else task.exception()
                        if error is not None:
                            raise error
            except aiomqtt.MqttError as exc:
                if self._own_connected:
                    log.warning("MQTT connection for the satellites' own subscriptions to %s "
                                "lost (%s); reconnecting", self.settings.address, exc)
            finally:
                if self._own_connected:
                    self._own_lost()
                self._own_connected = False
            await asyncio.sleep(self._own_backoff.next_delay())

    async def _own_read(self, client: aiomqtt.Client) -> None:
        async for first in client.messages:
            self._receive_own(first)
            for message in self.own_inbox.drain():
                self._receive_own(message)

    async def _own_sync(self, client: aiomqtt.Client) -> None:
        """Keeps the connection's subscriptions those of `_handovers` (all of them again
        after a reconnect: a broker restart forgets them). Each change is sent at once, not
        after the acknowledgements of the last ones: those come behind whatever the
        connection has queued, and a flooding site unsubscribed late keeps flooding it."""
        requested: set[str] = set()
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._own_changed.clear()
                wanted = set(self._handovers)
                for topic in sorted(requested - wanted):
                    requested.discard(topic)
                    pending.add(asyncio.create_task(self._own_unsubscribe(client, topic)))
                for topic in sorted(wanted - requested):
                    requested.add(topic)
                    pending.add(asyncio.create_task(self._own_subscribe(client, topic)))
                changed = asyncio.create_task(self._own_changed.wait())
                try:
                    done, _ = await asyncio.wait({changed, *pending},
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                for task in done - {changed}:
                    pending.discard(task)
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        raise error  # the connection failed: _own_link reconnects
        finally:
            for task in pending:
                task.cancel()

    async def _own_unsubscribe(self, client: aiomqtt.Client, topic: str) -> None:
        await client.unsubscribe(topic)
        self.own_unsubscribes += 1

    async def _own_subscribe(self, client: aiomqtt.Client, topic: str) -> None:
        # QoS 1, as the wildcard's: a satellite's QoS 1 frames are never dropped.
        granted = await client.subscribe(topic, qos=QOS_AT_LEAST_ONCE)
        self.own_subscribes += 1
        if any((code.value if isinstance(code, ReasonCode) else code) >= SUBACK_FAILURE
               for code in granted):
            self.own_refused += 1  # e.g. the broker's ACL: it stays on the wildcard
            log.warning("the broker refused the subscription to %s; its frames keep coming "
                        "through %s", topic, self.topic_filter)
            handover = self._handovers.get(topic)
            for site in self._sites.values():
                if handover is not None and site.own is handover:
                    site.no_own = True
                    self._release(site)
            return
        handover = self._handovers.get(topic)
        if handover is not None:  # else released meanwhile: unsubscribed next round
            handover.subscribed(self._clock())

    def _receive(self, message: aiomqtt.Message) -> None:
        self.on_wild_frame(message.topic.value, _payload(message))

    def _receive_own(self, message: aiomqtt.Message) -> None:
        self.on_own_frame(message.topic.value, _payload(message))

    def on_wild_frame(self, topic: str, payload: bytes) -> None:
        """A frame from the wildcard subscription (public for tests): through the site's
        hand-over if it has its own subscription, else straight to `on_frame`."""
        handover = self._handovers.get(topic)
        if handover is None:
            self.on_frame(topic, payload)
            return
        before = handover.phase
        self._take(topic, handover, before, handover.from_wild(payload, self._clock()))

    def on_own_frame(self, topic: str, payload: bytes) -> None:
        """A frame from a site's own subscription (public for tests)."""
        handover = self._handovers.get(topic)
        if handover is None:
            self.own_stale += 1  # unsubscribed meanwhile: the wildcard delivers it
            return
        before = handover.phase
        self._take(topic, handover, before, handover.from_own(payload, self._clock()))

    def _take(self, topic: str, handover: Handover, before: Phase,
              frames: list[bytes]) -> None:
        if before is not Phase.OWN and handover.phase is Phase.OWN:
            self.handovers += 1
            self.handover_timeouts += handover.timed_out
        for payload in frames:
            self.on_frame(topic, payload)

    async def _watch_idle(self) -> None:
        tick = min(self._idle_flush_s, self.limits.idle_evict_s) / 4
        while True:
            await asyncio.sleep(tick)  # a timer, not synchronisation: sites idle in wall time
            self.check_idle()

    def check_idle(self) -> None:
        """Flush sites idle for `idle_flush_s`, evict those idle for `idle_evict_s` (public so
        tests can drive it with their own clock)."""
        if self._stopping:
            return
        now = self._clock()
        for site in list(self._sites.values()):
            idle = now - site.last_frame
            if site.dsp is None:
                # Nothing decoded yet: forgotten when its frames come back bad, or (all of
                # them refused before decoding) once it has been quiet as long as a live one.
                if site.pending == 0 and idle >= self.limits.idle_evict_s:
                    del self._sites[site.id]
                continue
            if site.pending:
                continue  # frames still with the decoder: not idle, only behind
            if idle >= self.limits.idle_evict_s:
                del self._sites[site.id]  # a new frame under its name starts a new stream
                self._release(site)
                self._submit(_Evict(site=site, now=now))
            elif site.needs_flush and idle >= self._idle_flush_s:
                site.needs_flush = False
                self.idle_flushes += 1
                self._submit(_Flush(site=site, silence=self._flush_silence))
        if self.own_enabled:
            self._check_own(now)

    def _check_own(self, now: float) -> None:
        """Own subscriptions: hand-overs past their wait, new ones, an outage's end."""
        for topic, handover in list(self._handovers.items()):
            before = handover.phase
            self._take(topic, handover, before, handover.expire(now))
        if not self._own_connected:
            return
        for site in list(self._sites.values()):
            age = now - site.since
            if site.own is not None or site.no_own or site.dsp is None or \
                    site.topic is None or age < OWN_AFTER_S or now < site.own_after or \
                    site.audio_s > OWN_MAX_AUDIO_RATIO * age:
                continue
            if not self._own_bucket.take(1.0, now):
                self.own_deferred += 1
                break  # the rest wait for a later tick
            site.own = self._handovers[site.topic] = Handover(now=now)
            self._own_changed.set()

    def _own_lost(self) -> None:
        """The own connection dropped: its sites go back to the wildcard at once, so that
        their copies there are taken, not discarded, however often it drops (a blip, or a
        peer taking over its client id); they are handed over again once it is back."""
        for site in list(self._sites.values()):
            if site.own is not None:
                self.own_released += 1
                self._release(site)

    def _release(self, site: _Site) -> None:
        """Ends a site's own subscription: its frames come from the wildcard again."""
        handover, site.own = site.own, None
        if handover is None or site.topic is None:
            return
        # Frames it held back are delivered by the wildcard too: nothing to take from them.
        self.duplicates_dropped += handover.duplicates
        if self._handovers.get(site.topic) is handover:
            del self._handovers[site.topic]
        self._own_changed.set()

    def _demote(self, site: _Site, now: float) -> None:
        """A site whose frames are refused for rate, OWN_DEMOTE_REFUSALS of them within
        OWN_DEMOTE_WINDOW_S, is flooding (or a flood is on its topic): off the own connection
        for a while, where that flood would make the broker drop the other admitted sites'
        frames. Not for good: it gets its own subscription back after the cool-down."""
        site.refused.append(now)
        if len(site.refused) < OWN_DEMOTE_REFUSALS or \
                now - site.refused[0] > OWN_DEMOTE_WINDOW_S:
            return
        site.refused.clear()
        site.own_after = now + OWN_COOLDOWN_S
        if site.own is not None:
            self.own_demoted += 1
            self._release(site)

    # ------------------------------------------------------------------ frames

    def on_frame(self, topic: str, payload: bytes) -> None:
        """Admit one frame and hand it to the decoder (public for replaying captured frames).

        Never raises: whatever goes wrong rejects this one frame, counted in `rejections`.
        """
        if self._stopping:
            return
        self.frames += 1
        try:
            self._on_frame(topic, payload)
        except _Rejected as rejected:
            self.rejections.reject(rejected.reason, f"{topic}: {rejected}")
        except Exception as exc:  # untrusted input: one bad frame must never end the run
            self.rejections.reject("error", f"{topic}: {type(exc).__name__}: {exc}")

    def _on_frame(self, topic: str, payload: bytes) -> None:
        raw_site = site_from_topic(self.topic_filter, topic)
        if raw_site is None:
            return  # not an audio topic of ours (e.g. playBytes under a '#' filter)
        site_id = satellite_id(raw_site)
        now = self._clock()
        if len(payload) > MAX_FRAME_BYTES:
            raise _Rejected("malformed", f"{len(payload)} bytes; a frame may have at most "
                            f"{MAX_FRAME_BYTES}")
        site = self._sites.get(site_id)
        if site is None:
            # Admitted for now; if none of its frames decodes it is forgotten again.
            site = self._admit(site_id, raw_site, now)
        # Rate limits before any decoding: a flood costs a dict look-up, not a parse.
        if not site.frames.take(1.0, now):
            self._demote(site, now)
            raise _Rejected("rate_limited", "more than "
                            f"{self.limits.max_frames_per_s:g} frames/s from this site")
        if not site.bytes.take(float(len(payload)), now):
            self._demote(site, now)
            raise _Rejected("rate_limited", "more than "
                            f"{self.limits.max_bytes_per_s:g} bytes/s from this site")
        if site.pending >= self._max_pending or self._pending >= self._max_pending_all or \
                site.pending_bytes + len(payload) > MAX_PENDING_BYTES_PER_SITE:
            # The decoder is behind: drop at the door, not after queueing without bound.
            site.skipped += 1
            site.decode_dropped += 1
            self.decode_dropped += 1
            return
        site.pending += 1
        site.pending_bytes += len(payload)
        self._pending += 1
        skipped, site.skipped = site.skipped, 0
        self._submit(_Frame(site=site, topic=topic, payload=payload, now=now, skipped=skipped))

    def _admit(self, site_id: str, raw: str, now: float) -> _Site:
        """A new site's admission state; raises _Rejected if it may not stream now."""
        limits = self.limits
        if limits.allow and site_id not in self._allowed_ids:
            raise _Rejected("not_allowed", f"site {site_id!r} is not in mqtt.allowed_sites")
        if len(self._sites) >= limits.max_sites:
            raise _Rejected("too_many_sites", f"{len(self._sites)} sites are live; the limit "
                            f"is mqtt.max_sites = {limits.max_sites}")
        site = _Site(id=site_id, raw=raw, last_frame=now, since=now,
                     frames=TokenBucket.full(rate=limits.max_frames_per_s,
                                             burst=limits.max_frames_per_s * limits.burst_s,
                                             now=now),
                     bytes=TokenBucket.full(rate=limits.max_bytes_per_s,
                                            burst=limits.max_bytes_per_s * limits.burst_s,
                                            now=now))
        self._sites[site_id] = site
        return site

    # ------------------------------------------------------------- the decoder

    def _submit(self, job: _Job) -> None:
        """To the decoder thread, or (not started) decoded here and now."""
        if self._thread is not None:
            self._jobs.put(job)
        else:
            self._apply(self._decode(job))

    def _decode_loop(self) -> None:
        """The decoder thread: jobs in the order they were handed over, results to the loop."""
        loop = self._loop
        while True:
            job = self._jobs.get()
            if job is None or loop is None:
                return
            done = self._decode(job)
            try:
                loop.call_soon_threadsafe(self._apply, done)
            except RuntimeError:  # the loop closed under us: nobody is left to take it
                return

    def _decode(self, job: _Job) -> _Done:
        """One job; never raises (runs on the decoder thread, or inline)."""
        try:
            if isinstance(job, _Frame):
                return self._decode_frame(job)
            if isinstance(job, _Flush):
                dsp = job.site.dsp
                return _Done(job=job, blocks=self._flush(dsp, silence=job.silence)
                             if dsp is not None else [])
            if isinstance(job, _Evict):
                return self._evict(job)
            return _Done(job=job)
        except _Rejected as rejected:
            return _Done(job=job, reason=rejected.reason, detail=str(rejected))
        except Exception as exc:  # untrusted input: one bad frame must never end the run
            dsp = job.site.dsp if not isinstance(job, _Stop) else None
            if dsp is not None:
                # The filter may be half-updated: start it afresh, other sites untouched.
                dsp.resampler = StreamResampler(in_rate=dsp.rate)
            done = _Done(job=job, reason="error", detail=f"{type(exc).__name__}: {exc}")
            if isinstance(job, _Evict) and dsp is not None:  # the stream must end anyway
                done.last = AudioBlock(stream=job.site.id, start=dsp.blocker.position,
                                       samples=np.zeros(0, dtype=np.float32), last=True)
            return done

    def _decode_frame(self, job: _Frame) -> _Done:
        try:
            samples, rate = decode_wav(job.payload)
        except MalformedFrame as exc:
            raise _Rejected("malformed", str(exc)) from exc
        site = job.site
        dsp = site.dsp
        if dsp is None:
            dsp = site.dsp = self._new_dsp(site.id, rate, job.now)
        blocks: list[AudioBlock] = []
        if job.skipped and dsp.frame_samples:
            # Frames were dropped before this one: leave a gap of their estimated length,
            # so the site's clock stays on wall time.
            blocks += self._flush(dsp, silence=0)
            dsp.blocker.skip_to(dsp.blocker.position + job.skipped * dsp.frame_samples)
        # Before the resampler, the costly part: more audio than real time allows is refused.
        if not dsp.audio.take(samples.size / rate, job.now):
            return _Done(job=job, blocks=blocks, reason="rate_limited", detail="more than "
                         f"{self.limits.max_audio_ratio:g} s of audio per second from this "
                         "site")
        if dsp.rate != rate:
            # The satellite changed its format: finish the old filter's tail, then a new one.
            blocks += self._flush(dsp, silence=0)
            dsp.rate, dsp.resampler = rate, StreamResampler(in_rate=rate)
        # Clean before the filter: one NaN would smear over every output sample it touches.
        clean_in, bad = sanitize(samples)
        clean = dsp.resampler.process(clean_in)
        dsp.frame_samples = round(samples.size * SAMPLE_RATE / rate)
        blocks += dsp.blocker.push(clean)
        return _Done(job=job, blocks=blocks, nonfinite=bad, seconds=samples.size / rate)

    def _new_dsp(self, site_id: str, rate: int, now: float) -> _Dsp:
        limits = self.limits
        dsp = _Dsp(rate=rate, resampler=StreamResampler(in_rate=rate),
                   blocker=Blocker(stream_id=site_id, block_samples=self._block),
                   audio=TokenBucket.full(rate=limits.max_audio_ratio,
                                          burst=limits.max_audio_ratio * limits.burst_s,
                                          now=now))
        remembered = self._clocks.pop(site_id, None)
        if remembered is not None:
            # A returning satellite: its new stream starts where wall time says it is now.
            position, left = remembered
            dsp.blocker.skip_to(position + round(max(0.0, now - left) * SAMPLE_RATE))
        return dsp

    def _evict(self, job: _Evict) -> _Done:
        """End an idle site's stream: open audio out, then the stream's last block."""
        site, dsp = job.site, job.site.dsp
        if dsp is None:
            return _Done(job=job)
        tail = dsp.resampler.process(np.zeros(0, dtype=np.float32), last=True)
        blocks = [*dsp.blocker.push(tail), *dsp.blocker.flush()]
        if blocks:
            blocks[-1] = dataclasses.replace(blocks[-1], last=True)
        else:
            blocks = [AudioBlock(stream=site.id, start=dsp.blocker.position,
                                 samples=np.zeros(0, dtype=np.float32), last=True)]
        self._clocks[site.id] = (blocks[-1].end, job.now)
        while len(self._clocks) > CLOCK_MEMORY:
            self._clocks.popitem(last=False)
        return _Done(job=job, blocks=blocks[:-1], last=blocks[-1])

    def _flush(self, dsp: _Dsp, *, silence: int) -> list[AudioBlock]:
        """The site's open audio (the resampler's tail too), then `silence` samples."""
        tail = dsp.resampler.process(np.zeros(0, dtype=np.float32), last=True)
        dsp.resampler = StreamResampler(in_rate=dsp.rate)  # the old one has ended
        # The tail's input was sanitized already; the open block ends short, then silence.
        blocks = [*dsp.blocker.push(tail), *dsp.blocker.flush()]
        if silence:
            silent = np.zeros(silence, dtype=np.float32)
            blocks += [*dsp.blocker.push(silent), *dsp.blocker.flush()]
        return blocks

    # ------------------------------------------------------ results, on the loop

    def _apply(self, done: _Done) -> None:
        job = done.job
        if isinstance(job, _Frame):
            site = job.site
            site.pending -= 1
            site.pending_bytes -= len(job.payload)
            self._pending -= 1
            self.nonfinite_samples += done.nonfinite
            if done.reason is None:
                site.last_frame = max(site.last_frame, job.now)
                site.needs_flush = True
                site.audio_s += done.seconds
                if site.topic is None:
                    site.topic = job.topic
                if self._names is not None:  # a real site (it decodes): its own name
                    self._names.record(site.id, site.raw)
            elif site.dsp is None and site.pending == 0 and \
                    self._sites.get(site.id) is site:
                del self._sites[site.id]  # nothing of it decoded: it leaves no state
            elif done.reason == "rate_limited":
                self._demote(site, job.now)  # more audio than real time
        if done.reason is not None:
            where = job.topic if isinstance(job, _Frame) else \
                job.site.id if not isinstance(job, _Stop) else "stop"
            self.rejections.reject(done.reason, f"{where}: {done.detail}")
        self._enqueue(done.blocks)
        if isinstance(job, _Evict):
            if done.last is not None:
                # Never dropped, whatever the queue holds: without it the engine would keep
                # the stream forever. At most one per live site, so the queue stays bounded.
                self._queue.append(done.last)
                self._ready.set()
            self.evicted_sites += 1
            log.info("satellite %s sent nothing for %.0f s: its stream ended", job.site.id,
                     self.limits.idle_evict_s)
        elif isinstance(job, _Stop):
            self._stopped = True
            self._ready.set()

    def _enqueue(self, blocks: list[AudioBlock]) -> None:
        for block in blocks:
            if len(self._queue) >= self._max_queued:
                self.dropped_blocks += 1  # the clock still advanced: a gap, not a time shift
                continue
            self._queue.append(block)
        if blocks:
            self._ready.set()
