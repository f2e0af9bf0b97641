"""`harken bench soak`: hours of hostile smart-home life in minutes of setup.

All five tasks (captions, speaker identification, diarization, keywords, translation) run
on a looping real-speech file (stream `room`) and on K synthetic satellites that publish
Hermes audio frames of the same speech over a real mosquitto broker. The broker is
restarted every `restart_every_s`; a hostile publisher sends mutated WAV frames, deeply
nested control JSON, a flood of made-up sites and `homeassistant/status online` the whole
time. A persistent QoS 1 subscriber counts every caption final by id.

Reported (JSON with --json): RSS at start (after warm-up) and end and its slope (least
squares, MB per 10 minutes), event-loop lag p99, per-stream final latency (audio arrival to
final on the bus) in the first vs the last window after warm-up and its drift, dropped
blocks, rejected messages by reason, finals produced vs received (lost = produced ids never
received). The models are tiny random ones (app/bench/tiny_models.py): the benchmark
measures the engine, not the models.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
import numpy as np

from harken.app.config import (
    ComputeConfig,
    HarkenConfig,
    KeywordsConfig,
    RefineConfig,
    SpeakersConfig,
    TranslationConfig,
)
from harken.app.session import Session
from harken.app.voiceprints import VoiceprintStore
from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionFinal, Event
from harken.engine.memory import heap_usage
from harken.engine.mqtt.broker import EmbeddedBroker
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.sources.blocks import Blocker
from harken.models.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

ASSET = Path(__file__).resolve().parents[2] / "assets" / "sample.wav"
BLOCK_S = 0.1  # s per block of the looping file
FRAME_SAMPLES = 1024  # per Hermes audio frame, as Rhasspy sends them
LOOP_GAP_S = 1.5  # s of silence between loops of the speech, so segments end
SAMPLE_EVERY_S = 10.0  # s between RSS samples
LAG_TICK_S = 0.05  # s the loop-lag probe sleeps
LAG_BIN_MS = 0.1  # ms: resolution of the loop-lag histogram
LAG_MAX_MS = 5000.0  # ms: lags beyond land in the last bin (the maximum is kept exactly)
HOSTILE_PER_S = 20.0  # hostile messages per second
FLOOD_SITES_PER_S = 5.0  # of those, frames under new made-up site names
DRAIN_S = 60.0  # s after the end for the subscriber to receive what is still on its way
LATENCY_WINDOW_S = 600.0  # s: "first vs last 10 minutes"
SUBSCRIBER_ID = "harken-soak-subscriber"
RECENT_FINALS_KEPT = 1000  # matched final ids remembered, to tell a QoS 1 redelivery
CANCEL_GRACE_S = 5.0  # s a cancelled client task gets before it is cancelled again
CANCEL_ROUNDS = 5
WINDOW_MARGIN_S = 60.0  # s kept beyond each latency window (the run ends a little late)
MAX_LATENCY_STREAMS = 64  # streams whose latency is followed (the good ones come first)


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakOptions:
    minutes: float
    satellites: int
    audio: Path = ASSET
    restart_every_s: float = 180.0
    seed: int = 0
    heap_trim_s: float | None = None  # compute.heap_trim_s; None: the default

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    @property
    def warmup_s(self) -> float:
        return max(60.0, 0.1 * self.seconds)

    @property
    def latency_window_s(self) -> float:
        """Of the first and the last window compared for latency drift."""
        return min(LATENCY_WINDOW_S, (self.seconds - self.warmup_s) / 2)


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc), MB."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def rss_parts_mb() -> tuple[float, float] | None:
    """Anonymous and file-backed resident memory (Linux /proc/self/status), MB. File pages
    (the mapped libraries) come and go with the kernel's reclaim of cold pages: what the
    program's own allocations do shows in the anonymous part."""
    parts: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    parts[key] = int(value.split()[0]) * 1024 / 1e6
    except (OSError, ValueError):
        return None
    if len(parts) != 2:
        return None
    return parts["RssAnon"], parts["RssFile"]


def slope_per_10min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per 10 minutes."""
    if len(samples) < 3:
        return None
    t = np.array([s[0] for s in samples])
    y = np.array([s[1] for s in samples])
    return float(np.polyfit(t, y, 1)[0] * 600.0)


def wav_frame(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


class LoopingSource:
    """The speech file again and again (with a gap), released in real time."""

    description = "looping speech file"

    def __init__(self, audio: np.ndarray, *, stream_id: str = "room") -> None:
        self._audio = np.concatenate([audio, np.zeros(round(LOOP_GAP_S * SAMPLE_RATE),
                                                      dtype=np.float32)])
        self._stream = stream_id
        self._stop = asyncio.Event()
        self.loops = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    def stop(self) -> None:
        self._stop.set()

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        blocker = Blocker(stream_id=self._stream, block_samples=round(BLOCK_S * SAMPLE_RATE))
        start = time.monotonic()
        while not self._stop.is_set():
            for block in blocker.push(self._audio):
                # Released when its last sample would have been heard: real time.
                delay = start + block.end / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
                yield block
            self.loops += 1
        for block in blocker.flush():
            yield block


FinalId = tuple[str, int, float]


class FinalLedger:
    """Caption-final ids produced (by the engine) and received (at the subscriber), matched
    as they come. Only the unmatched ids are kept (and the latest matched ones, to tell a
    redelivery), so over hours the benchmark's own bookkeeping stays the same size and does
    not show up in the RSS slope it measures."""

    def __init__(self, *, recent_kept: int = RECENT_FINALS_KEPT) -> None:
        self.produced = 0
        self.received = 0  # distinct ids
        self.messages = 0  # all deliveries, redeliveries included
        self.duplicates = 0
        self._waiting: dict[FinalId, None] = {}  # produced, not received yet (in order)
        self._early: set[FinalId] = set()  # received before the engine's own sink saw it
        self._recent: collections.deque[FinalId] = collections.deque(maxlen=recent_kept)
        self._recent_set: set[FinalId] = set()

    def _matched(self, key: FinalId) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(key)
        self._recent_set.add(key)

    def produce(self, key: FinalId) -> None:
        if key in self._waiting or key in self._recent_set:
            return  # the same final twice from the engine: counted once
        self.produced += 1
        if key in self._early:
            self._early.discard(key)
            self._matched(key)
        else:
            self._waiting[key] = None

    def receive(self, key: FinalId) -> None:
        self.messages += 1
        if key in self._recent_set or key in self._early:
            self.duplicates += 1
            return
        self.received += 1
        if key in self._waiting:
            del self._waiting[key]
            self._matched(key)
        else:
            self._early.add(key)

    @property
    def missing(self) -> list[FinalId]:
        """Produced and (so far) never received."""
        return list(self._waiting)

    @property
    def unproduced(self) -> int:
        """Received and never produced (a redelivery older than the ids kept)."""
        return len(self._early)

    @property
    def kept(self) -> int:
        """Ids held now: what the ledger's memory grows with."""
        return len(self._waiting) + len(self._early) + len(self._recent)


class LatencyWindows:
    """Final latencies of one stream in the first window after warm-up and the latest
    window (each with a margin: latency_drift cuts them exactly, from the run's measured
    length): both bounded by the window's length, however long the run."""

    def __init__(self, *, start_s: float, window_s: float) -> None:
        self.start_s = start_s
        self.window_s = window_s
        self.first: list[tuple[float, float]] = []
        self.last: collections.deque[tuple[float, float]] = collections.deque()

    def add(self, t: float, latency_s: float) -> None:
        if self.start_s <= t < self.start_s + self.window_s + WINDOW_MARGIN_S:
            self.first.append((t, latency_s))
        self.last.append((t, latency_s))
        while self.last and self.last[0][0] < t - self.window_s - WINDOW_MARGIN_S:
            self.last.popleft()

    def points(self) -> list[tuple[float, float]]:
        """What latency_drift needs: the first window and the latest one (no overlap twice)."""
        first = set(self.first)
        return self.first + [p for p in self.last if p not in first]


@dataclass
class FinalCounter:
    """A sink: every caption final produced (by id) and its latency from audio arrival."""

    ledger: FinalLedger
    start_s: float  # warm-up: latencies before it are not kept
    window_s: float  # of the first and the last latency window
    session: Session | None = None
    name: str = "soak-counter"
    latencies: dict[str, LatencyWindows] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)  # events seen, by type
    t0: float = field(default_factory=time.monotonic)

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            self.types[event.type] = self.types.get(event.type, 0) + 1
            if not isinstance(event, CaptionFinal):
                continue
            self.ledger.produce(final_id(event.stream, event.segment, event.start))
            engine = self.session.engine if self.session is not None else None
            state = engine.streams.get(event.stream) if engine is not None else None
            arrived = state.arrivals.time_of(round(event.end * SAMPLE_RATE)) \
                if state is not None else None
            if arrived is not None:
                now = time.monotonic()
                windows = self.latencies.get(event.stream)
                if windows is None:
                    if len(self.latencies) >= MAX_LATENCY_STREAMS:
                        continue
                    windows = self.latencies[event.stream] = LatencyWindows(
                        start_s=self.start_s, window_s=self.window_s)
                windows.add(now - self.t0, now - arrived)


def final_id(stream: str, segment: int, start: float) -> FinalId:
    return (stream, int(segment), round(float(start), 3))


class Subscriber:
    """A persistent (clean_session=False) QoS 1 subscriber that survives broker restarts."""

    def __init__(self, port: int, ledger: FinalLedger) -> None:
        self.port = port
        self.ledger = ledger
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=SUBSCRIBER_ID,
                                          clean_session=False,
                                          protocol=aiomqtt.ProtocolVersion.V311) as client:
                    await client.subscribe("harken/+/caption/final", qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        raw = message.payload
                        data = json.loads(bytes(raw) if isinstance(raw, (bytes, bytearray))
                                          else b"{}")
                        self.ledger.receive(final_id(data["stream"], data["segment"],
                                                     data["start"]))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)


async def publish_satellite(port: int, site: str, audio: np.ndarray, offset: int,
                            stats: dict[str, int]) -> None:
    """A Hermes satellite streaming the speech in real time, reconnecting as needed."""
    track = np.concatenate([audio, np.zeros(round(LOOP_GAP_S * SAMPLE_RATE),
                                            dtype=np.float32)])
    track = np.roll(track, -offset)
    frames = [wav_frame(track[i:i + FRAME_SAMPLES])
              for i in range(0, track.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    topic = f"hermes/audioServer/{site}/audioFrame"
    start = time.monotonic()
    sent = 0
    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier=f"soak-sat-{site}",
                                      protocol=aiomqtt.ProtocolVersion.V311) as client:
                while True:
                    due = start + (sent + 1) * FRAME_SAMPLES / SAMPLE_RATE
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await client.publish(topic, frames[sent % len(frames)], qos=0)
                    sent += 1
                    stats["frames_sent"] = stats.get("frames_sent", 0) + 1
        except aiomqtt.MqttError:
            # Frames due while the broker is away are lost, as from a real satellite.
            await asyncio.sleep(0.5)
            missed = int((time.monotonic() - start) * SAMPLE_RATE / FRAME_SAMPLES) - sent
            sent += max(0, missed)
            stats["frames_missed"] = stats.get("frames_missed", 0) + max(0, missed)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    out = bytearray(frame)
    for _ in range(rng.randint(1, 6)):
        out[rng.randrange(min(len(out), 48))] = rng.randrange(256)
    if rng.random() < 0.3:
        del out[rng.randrange(len(out)):]
    return bytes(out)


async def hostile(port: int, good: list[str], audio: np.ndarray, seed: int,
                  stats: dict[str, int]) -> None:
    """Mutated frames (on good and made-up sites), nested control JSON, a site flood and
    `homeassistant/status online`, HOSTILE_PER_S messages a second. No valid command: who
    may pause Harken is the broker's ACL's business (docs/mqtt.md), not a parser's."""
    rng = random.Random(seed)
    frame = wav_frame(audio[:FRAME_SAMPLES])
    nested = [b"[" * 4000, b'{"a":' * 800, b'{"command": ' + b"[" * 3000,
              b"\xff\xfe" * 100, b'{"command": 12345678901234567890}',
              b'{"command": "keywords", "keywords": [[[[1]]]], "id": 1e999}']
    flood = 0
    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="soak-hostile",
                                      protocol=aiomqtt.ProtocolVersion.V311) as client:
                while True:
                    await asyncio.sleep(1.0 / HOSTILE_PER_S)
                    kind = rng.random()
                    if kind < FLOOD_SITES_PER_S / HOSTILE_PER_S:
                        flood += 1
                        topic, payload = f"hermes/audioServer/flood-{flood}/audioFrame", frame
                    elif kind < 0.55:
                        site = rng.choice(good) if good else "x"
                        topic = f"hermes/audioServer/{site}/audioFrame"
                        payload = mutate(rng, frame)
                    elif kind < 0.85:
                        topic, payload = "harken/soak/set", rng.choice(nested)
                    else:
                        topic, payload = "homeassistant/status", b"online"
                    await client.publish(topic, payload, qos=0)
                    stats["hostile_sent"] = stats.get("hostile_sent", 0) + 1
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def cancel_all(tasks: list[asyncio.Task[None]], *, grace_s: float = CANCEL_GRACE_S,
                     rounds: int = CANCEL_ROUNDS) -> int:
    """Cancels `tasks` and waits for them to end, cancelling again any still running after
    `grace_s`; returns how many never ended. aiomqtt's `Client.__aexit__` (2.5) waits with
    no timeout for the disconnect to be acknowledged, so a client cancelled while its
    connection is half gone (a broker restart, a full socket) waits for ever, and the
    benchmark with it (seen in a 12-minute soak): a second cancel ends that wait."""
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    for _ in range(rounds):
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
    return len(pending)


class LagHistogram:
    """Event-loop lags in fixed 0.1 ms bins up to LAG_MAX_MS (one overflow bin): constant
    memory, so the benchmark's own bookkeeping does not show up in the RSS slope."""

    def __init__(self) -> None:
        self.counts = np.zeros(round(LAG_MAX_MS / LAG_BIN_MS) + 1, dtype=np.int64)
        self.max_ms = 0.0

    def add(self, lag_s: float) -> None:
        ms = max(0.0, lag_s * 1000)
        self.max_ms = max(self.max_ms, ms)
        self.counts[min(len(self.counts) - 1, int(ms / LAG_BIN_MS))] += 1

    def percentile(self, q: float) -> float | None:
        total = int(self.counts.sum())
        if not total:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), q / 100 * total))
        return round((index + 1) * LAG_BIN_MS, 2)  # the bin's upper edge


async def probe_lag(lags: LagHistogram) -> None:
    while True:
        before = time.monotonic()
        await asyncio.sleep(LAG_TICK_S)
        lags.add(time.monotonic() - before - LAG_TICK_S)


def latency_drift(points: list[tuple[float, float]], *, start_s: float,
                  end_s: float) -> dict[str, Any]:
    """Median latency in the first and the last window of [start_s, end_s]."""
    window = min(LATENCY_WINDOW_S, (end_s - start_s) / 2)
    first = [v for t, v in points if start_s <= t < start_s + window]
    last = [v for t, v in points if end_s - window <= t <= end_s]
    out: dict[str, Any] = {"window_s": round(window, 1), "finals_first": len(first),
                           "finals_last": len(last)}
    if first and last:
        a, b = statistics.median(first), statistics.median(last)
        out.update(first_median_s=round(a, 4), last_median_s=round(b, 4),
                   drift_pct=round((b - a) / a * 100, 1) if a > 0 else None)
    return out


def _config(store: Path, heap_trim_s: float | None = None) -> HarkenConfig:
    compute = ComputeConfig() if heap_trim_s is None else ComputeConfig(heap_trim_s=heap_trim_s)
    return HarkenConfig(
        refine=RefineConfig(model="none"),
        compute=compute,
        # A low bar: the tiny random model's hits keep keyword events flowing to MQTT.
        keywords=KeywordsConfig(enabled=True, words=["yes", "no", "stop", "go"],
                                threshold=0.15, patience=1),
        translation=TranslationConfig(languages=["de"], max_new_tokens=16),
        speakers=SpeakersConfig(enabled=True, store=store))


async def soak(options: SoakOptions, *, verbose: bool = True) -> dict[str, Any]:
    from harken.app.bench.tiny_models import tiny_models
    from harken.app.clips import read_audio

    def say(text: str) -> None:
        if verbose:
            print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    audio = await asyncio.to_thread(read_audio, options.audio)
    models = await asyncio.to_thread(tiny_models)
    stats: dict[str, int] = {}
    lags = LagHistogram()
    rss: list[tuple[float, float]] = []
    # glibc's in-use and freed-but-held heap at each RSS sample: which of them RSS follows
    heap: list[tuple[float, float, float]] = []
    parts: list[tuple[float, float, float]] = []  # (s, anonymous MB, file-backed MB)
    with tempfile.TemporaryDirectory(prefix="harken-soak-") as tmp:
        folder = Path(tmp)
        store = folder / "voiceprints.db"
        speakers = models.speakers
        if speakers is not None:  # speaker identification: one enrolled voiceprint
            clip = audio[: 3 * SAMPLE_RATE]
            embedding = await asyncio.to_thread(speakers.embedder.embed, [clip])
            VoiceprintStore(path=store).enroll("reader", model_id=speakers.embedder.model_id,
                                               embeddings=embedding, speech_s=3.0)
        (folder / "broker").mkdir()
        async with EmbeddedBroker(port=0, persistence_dir=folder / "broker") as broker:
            sites = [f"sat{i}" for i in range(options.satellites)]
            settings = broker.settings
            satellites = SatelliteSource(
                settings=settings, client_id="harken-soak-audio", backoff_initial_s=0.2,
                backoff_max_s=2.0,
                limits=SiteLimits(max_sites=options.satellites + 4, idle_evict_s=30.0))
            room = LoopingSource(audio)
            sink = MqttSink(settings=settings, options=MqttSinkOptions(
                site="soak", sites_from_streams=True, ha_discovery=True,
                backoff_initial_s=0.2, backoff_max_s=2.0, outbox_size=5000))
            ledger = FinalLedger()
            counter = FinalCounter(ledger=ledger, start_s=options.warmup_s,
                                   window_s=options.latency_window_s)
            session = Session(config=_config(store, options.heap_trim_s),
                              sources=[room, satellites], sinks=[sink, counter], live=True,
                              models=models)
            counter.session = session
            subscriber = Subscriber(broker.port, ledger)
            async with asyncio.TaskGroup() as tg:
                background = [tg.create_task(subscriber.run(), name="subscriber"),
                              tg.create_task(probe_lag(lags), name="lag")]
                await subscriber.subscribed.wait()
                run = tg.create_task(session.run(), name="session")
                background += [
                    tg.create_task(publish_satellite(broker.port, site, audio,
                                                     i * SAMPLE_RATE // 2, stats),
                                   name=f"sat-{site}") for i, site in enumerate(sites)]
                background.append(tg.create_task(
                    hostile(broker.port, sites, audio, options.seed, stats), name="hostile"))
                t0 = time.monotonic()
                counter.t0 = t0
                next_restart = t0 + options.restart_every_s
                next_sample = t0
                while (now := time.monotonic()) < t0 + options.seconds:
                    if now >= next_sample:
                        rss.append((now - t0, rss_mb()))
                        split = rss_parts_mb()
                        if split is not None:
                            parts.append((now - t0, *split))
                        usage = heap_usage()
                        if usage is not None:
                            heap.append((now - t0, usage.in_use_bytes / 1e6,
                                         usage.free_bytes / 1e6))
                        next_sample += SAMPLE_EVERY_S
                        if len(rss) % 6 == 1:
                            say(f"{(now - t0) / 60:.1f} min: RSS {rss[-1][1]:.1f} MB, finals "
                                f"{ledger.produced} produced / "
                                f"{ledger.received} received, rejected "
                                f"{satellites.rejected_frames}+{sink.rejections.total}")
                    if now >= next_restart:
                        say("restarting the broker")
                        await broker.restart()
                        next_restart += options.restart_every_s
                    await asyncio.sleep(1.0)
                duration = time.monotonic() - t0
                # Publishers stop; the subscriber keeps reading.
                stuck = await cancel_all(background[2:])
                room.stop()
                satellites.stop()
                await run
                deadline = time.monotonic() + DRAIN_S

                def waiting() -> bool:
                    behind = bool(ledger.missing)
                    return behind and time.monotonic() < deadline

                while waiting():  # noqa: ASYNC110 (a deadline poll, not a synchronisation)
                    await asyncio.sleep(0.5)
                stuck += await cancel_all(background[:2])
                if stuck:
                    log.warning("%d client tasks did not end after %d cancels", stuck,
                                CANCEL_ROUNDS)
            engine = session.engine
    lost = ledger.missing
    warm = [(t, m) for t, m in rss if t >= options.warmup_s]
    warm_heap = [h for h in heap if h[0] >= options.warmup_s]
    warm_parts = [p for p in parts if p[0] >= options.warmup_s]
    trimmer = engine.heap if engine is not None else None
    return {
        "benchmark": "soak",
        "minutes": round(duration / 60, 2),
        "satellites": options.satellites,
        "broker_restarts": broker.restarts,
        "models": "tiny random (app/bench/tiny_models.py), all five tasks",
        "rss_mb": {"start": round(warm[0][1], 1) if warm else None,
                   "end": round(rss[-1][1], 1) if rss else None,
                   "peak": round(max(m for _, m in rss), 1) if rss else None,
                   "slope_mb_per_10min": _round(slope_per_10min(warm), 3),
                   "warmup_s": options.warmup_s,
                   # one sample a minute: where the memory goes up, and whether it comes back
                   "per_minute": [round(m, 1) for t, m in rss if int(t) % 60 < SAMPLE_EVERY_S],
                   # RSS = anonymous (the program's memory) + file-backed (mapped libraries)
                   "anon_start_end": [round(warm_parts[0][1], 1), round(warm_parts[-1][1], 1)]
                   if warm_parts else None,
                   "anon_slope_mb_per_10min": _round(slope_per_10min(
                       [(t, a) for t, a, _ in warm_parts]), 3),
                   "file_start_end": [round(warm_parts[0][2], 1), round(warm_parts[-1][2], 1)]
                   if warm_parts else None,
                   "file_slope_mb_per_10min": _round(slope_per_10min(
                       [(t, f) for t, _, f in warm_parts]), 3)},
        "heap": {
            "trim_interval_s": trimmer.interval_s if trimmer is not None else 0,
            "trims": trimmer.stats.trims if trimmer is not None else 0,
            "trim_released_mb": round(trimmer.stats.released_bytes / 1e6, 1)
            if trimmer is not None else 0,
            "trim_ms_mean": round(trimmer.stats.busy_s / trimmer.stats.trims * 1000, 2)
            if trimmer is not None and trimmer.stats.trims else None,
            "trim_ms_max": round(trimmer.stats.max_s * 1000, 2) if trimmer is not None else None,
            # glibc mallinfo2 after warm-up (None on another allocator)
            "in_use_mb_start_end": [round(warm_heap[0][1], 1), round(warm_heap[-1][1], 1)]
            if warm_heap else None,
            "free_held_mb_start_end": [round(warm_heap[0][2], 1), round(warm_heap[-1][2], 1)]
            if warm_heap else None,
            "in_use_slope_mb_per_10min": _round(slope_per_10min(
                [(t, u) for t, u, _ in warm_heap]), 3),
            "free_held_slope_mb_per_10min": _round(slope_per_10min(
                [(t, f) for t, _, f in warm_heap]), 3)},
        "loop_lag_ms": {"p50": lags.percentile(50), "p99": lags.percentile(99),
                        "max": round(lags.max_ms, 2)},
        "latency": {stream: latency_drift(windows.points(), start_s=options.warmup_s,
                                          end_s=duration)
                    for stream, windows in sorted(counter.latencies.items())},
        "finals": {"produced": ledger.produced, "received": ledger.received,
                   "lost": len(lost), "lost_examples": sorted(lost)[:5],
                   "duplicates_received": ledger.duplicates,
                   "received_not_produced": ledger.unproduced},
        "dropped": {"satellite_blocks": satellites.dropped_blocks,
                    "bus": engine.bus.dropped() if engine is not None else {},
                    "satellite_frames_missed_during_restarts": stats.get("frames_missed", 0),
                    "outbox_dropped": sink.outbox_dropped, "undelivered": sink.undelivered},
        "rejected": {"satellite_frames": dict(satellites.rejections.by_reason),
                     "mqtt_messages": dict(sink.rejections.by_reason),
                     "error_replies_dropped": sink.error_replies_dropped,
                     "ha_status_coalesced": sink.ha_status_coalesced},
        "sent": {"satellite_frames": stats.get("frames_sent", 0),
                 "hostile_messages": stats.get("hostile_sent", 0)},
        "streams": {"evicted_sites": satellites.evicted_sites,
                    "ended": engine.streams_ended if engine is not None else 0,
                    "live_at_end": len(engine.streams) if engine is not None else 0},
        "events": dict(sorted(counter.types.items())),
        "reconnects": {"sink": sink.reconnects, "satellite_source": satellites.reconnects},
        "client_tasks_stuck_at_end": stuck,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def bench_soak(*, minutes: float, satellites: int, audio: Path | None, restart_every_s: float,
               verbose: bool, heap_trim_s: float | None = None) -> dict[str, Any]:
    options = SoakOptions(minutes=minutes, satellites=satellites, audio=audio or ASSET,
                          restart_every_s=restart_every_s, heap_trim_s=heap_trim_s)
    return asyncio.run(soak(options, verbose=verbose))
