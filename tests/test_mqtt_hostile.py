"""Hostile network input: nothing anyone publishes ends a run or grows memory without bound.

The fuzz tests call the real parsers (decode_wav, parse_command, SatelliteSource.on_frame,
MqttSink.on_message) with seeded random mutations; the only exception allowed out of a
parser is its own typed rejection. The limit tests drive the satellite source with a fake
clock through thousands of made-up sites, into a real Engine.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import struct
import tracemalloc
import wave
from collections.abc import AsyncIterator, Iterator
from types import TracebackType

import numpy as np
import pytest
from test_pipeline import QuietStage

from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionFinal, Event
from harken.engine.mqtt.client import LIBRARY_LOG, LIBRARY_LOG_FILTER, MqttSettings
from harken.engine.mqtt.control import (
    MAX_COMMAND_BYTES,
    ControlError,
    Pause,
    Resume,
    SetKeywords,
    SetTranslation,
    apply,
    parse_command,
)
from harken.engine.mqtt.guard import RateLimitFilter, Rejections, TokenBucket
from harken.engine.mqtt.satellites import (
    CLOCK_MEMORY,
    MalformedFrame,
    SatelliteSource,
    SiteLimits,
    decode_wav,
)
from harken.engine.mqtt.sink import ERROR_REPLY_BURST, MqttSink, MqttSinkOptions
from harken.engine.pipeline import LOCAL, REMOTE, Engine, EngineOptions
from harken.engine.stages.base import Stage, StageContext
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE

SEED = 20_261_129
WAV_MUTATIONS = 100_000
CONTROL_PAYLOADS = 10_000
AUDIO_TOPIC = "hermes/audioServer/{}/audioFrame"


def wav(samples: np.ndarray, *, rate: int = 16_000, width: int = 2, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def good_frames() -> list[bytes]:
    rng = np.random.default_rng(SEED)
    tone = (rng.standard_normal(256) * 3000).astype("<i2")
    return [wav(tone), wav(tone, rate=22_050), wav(np.repeat(tone, 2), channels=2),
            wav((tone // 256 + 128).astype(np.uint8), width=1),
            wav(tone.astype("<i4") << 16, width=4)]


def mutate_wav(rng: random.Random, base: bytes) -> bytes:
    """One hostile frame: header fields set to edge values, bytes flipped, cut, padded."""
    frame = bytearray(base)
    kind = rng.randrange(6)
    if len(frame) < 48 and kind < 3:
        kind = 3
    if kind == 0:  # flip a few header bytes
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(44)] = rng.randrange(256)
    elif kind == 1:  # a chunk size / format field set to an edge value
        offset = rng.choice((4, 16, 20, 22, 24, 28, 32, 34, 40))
        width = 2 if offset in (20, 22, 32, 34) else 4
        value = rng.choice((0, 1, 2**(8 * width) - 1, 2**(8 * width - 1), rng.randrange(2**16)))
        frame[offset:offset + width] = value.to_bytes(width, "little")
    elif kind == 2:  # truncated anywhere
        del frame[rng.randrange(len(frame)):]
    elif kind == 3:  # extra chunks / garbage appended
        frame += b"LIST" + struct.pack("<I", rng.randrange(2**32)) + rng.randbytes(
            rng.randrange(64))
    elif kind == 4:  # random bytes after a valid RIFF tag
        frame = bytearray(b"RIFF" + rng.randbytes(rng.randrange(80)))
    else:  # several of the above
        for _ in range(3):
            frame = bytearray(mutate_wav(rng, bytes(frame)) if rng.random() < 0.5 else frame)
    return bytes(frame)


def test_100k_mutated_wav_frames_raise_only_malformed_frame() -> None:
    rng = random.Random(SEED)
    bases = good_frames()
    outcomes = {"decoded": 0, "rejected": 0}
    for _ in range(WAV_MUTATIONS):
        payload = mutate_wav(rng, rng.choice(bases))
        try:
            samples, rate = decode_wav(payload)
        except MalformedFrame:
            outcomes["rejected"] += 1
        else:
            outcomes["decoded"] += 1
            assert samples.dtype == np.float32
            assert samples.ndim == 1
            assert rate >= 4_000
    # Both outcomes are common: the mutations reach past the header checks.
    assert min(outcomes.values()) > WAV_MUTATIONS // 20, outcomes


def test_a_riff_chunk_past_the_payload_is_a_malformed_frame() -> None:
    # The frame the issue found: wave's chunk reader raises RuntimeError on it.
    frame = bytearray(good_frames()[0])
    frame[40:44] = (2**31).to_bytes(4, "little")
    frame[4:8] = (2**31).to_bytes(4, "little")
    frame[36:40] = b"LIST"
    with pytest.raises(MalformedFrame):
        decode_wav(bytes(frame))


def hostile_command(rng: random.Random) -> bytes:
    kind = rng.randrange(8)
    depth = rng.choice((10, 500, 999, 1000, 1001, 3000, 4000))
    if kind == 0:
        return rng.choice((b"[", b"{\"a\":", b"[{\"x\":")) * depth
    if kind == 1:
        opener = rng.choice(("[", '{"command": ['))
        return (opener * depth + "]" * depth).encode()[:MAX_COMMAND_BYTES]
    if kind == 2:  # huge numbers
        number = rng.choice(("9" * rng.randrange(4000, 4090), "1e999", "-1e999", "NaN",
                             "Infinity", "1" + "0" * 400))
        return f'{{"command": "pause", "id": {number}}}'.encode()
    if kind == 3:  # invalid UTF-8
        return rng.randbytes(rng.randrange(1, 200)).replace(b"\n", b"\xff") + b"\xc3\x28"
    if kind == 4:  # wrong types in every field
        value = rng.choice((5, None, True, [], {}, [1, 2], "x" * 300, {"a": [1]}, -1.5))
        field = rng.choice(("command", "keywords", "language", "id"))
        data = {"command": rng.choice(("pause", "keywords", "translation", "resume")),
                field: value}
        return json.dumps(data).encode()
    if kind == 5:  # oversize
        return b'{"command": "keywords", "keywords": ["' + b"a" * rng.randrange(
            MAX_COMMAND_BYTES, 3 * MAX_COMMAND_BYTES) + b'"]}'
    if kind == 6:  # a valid command with random bytes changed
        base = bytearray(rng.choice((b'{"command": "pause", "id": "x"}',
                                     b'{"command": "keywords", "keywords": ["go", "stop"]}',
                                     b'{"command": "translation", "language": "de"}')))
        for _ in range(rng.randint(1, 5)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        return bytes(base)
    return rng.randbytes(rng.randrange(0, 300))


def test_10k_hostile_control_payloads_raise_only_control_error() -> None:
    rng = random.Random(SEED)
    parsed = 0
    errors: list[ControlError] = []
    for _ in range(CONTROL_PAYLOADS):
        payload = hostile_command(rng)
        try:
            command = parse_command(payload)
        except ControlError as err:
            errors.append(err)
        else:
            parsed += 1
            assert isinstance(command, (Pause, Resume, SetKeywords, SetTranslation))
    rejected = len(errors)
    # Answers stay small whatever was sent: codes are fixed, echoed text is cut short.
    assert {e.code for e in errors} <= {"too_large", "invalid_json", "invalid_command",
                                        "invalid_argument", "unknown_command"}
    assert max(len(str(e)) for e in errors) < 1000
    assert all(e.request_id is None or len(e.request_id) <= 64 for e in errors)
    assert rejected > CONTROL_PAYLOADS // 2
    assert parsed > 0


@pytest.mark.parametrize("payload", [b"[" * 4000, b'{"a":' * 800, b"[{}," * 1000],
                         ids=["list", "object", "mixed"])
def test_deep_nesting_is_invalid_json_not_a_recursion_error(payload: bytes) -> None:
    with pytest.raises(ControlError) as err:
        parse_command(payload)
    assert err.value.code == "invalid_json"


def test_a_huge_number_as_id_is_cut_short() -> None:
    command = parse_command(b'{"command": "pause", "id": ' + b"9" * 4000 + b"}")
    assert command == Pause(id="9" * 64)


class Target:
    """A control target with pause sources, like the Engine."""

    def __init__(self) -> None:
        self.by: set[str] = set()

    @property
    def paused(self) -> bool:
        return bool(self.by)

    def pause(self, *, by: str = LOCAL) -> None:
        self.by.add(by)

    def resume(self, *, by: str = LOCAL) -> None:
        if by == LOCAL:
            self.by.clear()
        else:
            self.by.discard(by)


async def test_control_flood_on_the_sink_is_rejected_counted_and_answered_at_a_bounded_rate(
        caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(SEED)
    sink = MqttSink(settings=MqttSettings(host="127.0.0.1"),
                    options=MqttSinkOptions(site="den", ha_discovery=True), control=Target())
    with caplog.at_level(logging.WARNING, logger="harken.engine.mqtt"):
        for _ in range(CONTROL_PAYLOADS // 5):
            sink.on_message("harken/den/set", hostile_command(rng))
            sink.on_message("homeassistant/status", rng.choice((b"online", b"\xff", b"")))
    assert sink.commands_rejected > 1000
    assert sink.rejections.total == sink.commands_rejected  # nothing escaped as "error"
    # Answers are rate limited (the flood ran in well under a second), logs too.
    error_replies = [m for m in sink._outbox if m.topic == "harken/den/error"]
    assert len(error_replies) <= ERROR_REPLY_BURST + 2
    assert sink.error_replies_dropped > 0
    assert len(caplog.records) <= 10


async def test_ha_status_flood_is_coalesced_and_never_pushes_finals_out() -> None:
    sink = MqttSink(settings=MqttSettings(host="127.0.0.1"), options=MqttSinkOptions(
        site="den", ha_discovery=True, keywords=("stop", "go"), outbox_size=50))
    sink._add_site("den", announce=True)
    sink.connected = True  # routing as if connected; nothing is sent (no link task)
    for i in range(20):
        sink._route(CaptionFinal(stream="mic", start=i, end=i + 0.5, segment=i, text="x"))
    for _ in range(5000):
        sink.on_message("homeassistant/status", b"online")
    topics = [m.topic for m in sink._outbox]
    finals = [t for t in topics if t.endswith("caption/final")]
    assert len(finals) == 20
    assert sink.outbox_dropped == 0
    configs = [t for t in topics if t.startswith("homeassistant/")]
    assert len(configs) == len(set(configs)) == 4  # 2 sensors + 2 keyword events, once each
    assert sink.ha_announcements == 1
    assert sink.ha_status_coalesced == 4998
    if sink._announce_later is not None:
        sink._announce_later.cancel()


def test_a_remote_resume_never_lifts_a_local_pause() -> None:
    target = Target()
    target.pause(by=LOCAL)
    with pytest.raises(ControlError) as err:
        apply(parse_command(b"resume"), target)
    assert err.value.code == "paused_locally"
    assert target.paused
    apply(parse_command(b"pause"), target)
    target.resume()  # the person at the machine lifts every pause
    assert not target.paused
    apply(parse_command(b"pause"), target)
    apply(parse_command(b"resume"), target)
    assert not target.paused
    assert target.by == set()


def test_engine_tracks_pause_sources() -> None:
    engine = Engine(sources=[FakeSource([])], stages=[SegmentStage], worker=None,  # type: ignore[arg-type]
                    options=EngineOptions())
    engine.pause(by=REMOTE)
    engine.pause()
    engine.resume(by=REMOTE)
    assert engine.paused
    assert engine.paused_by == {LOCAL}
    engine.resume()
    assert not engine.paused


# ------------------------------------------------------------------ guard pieces


def test_rejections_log_at_a_bounded_rate_and_summarise(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rejections = Rejections(logger=logging.getLogger("t"), what="frame", interval_s=10,
                            burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        for i in range(100):
            rejections.reject("malformed", f"bad\nline {i}")
        now[0] = 11.0
        rejections.reject("rate_limited", "x")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert "97 more rejected frame" in lines[3]
    assert all("\n" not in line for line in lines)  # a hostile text cannot forge log lines
    assert rejections.total == 101
    assert rejections.by_reason == {"malformed": 100, "rate_limited": 1}


def test_token_bucket() -> None:
    bucket = TokenBucket.full(rate=10, burst=5, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(1, 0.1)
    assert not bucket.take(1, 0.1)
    assert bucket.take(5, 100.0)
    assert not bucket.take(6, 200.0)  # never above the burst


# ---------------------------------------------------------------- satellite sites


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def satellite(clock: FakeClock, **limits: float | int | frozenset[str]) -> SatelliteSource:
    return SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                           limits=SiteLimits(**limits),  # type: ignore[arg-type]
                           clock=clock)


def frame(n: int = 1024, level: int = 0) -> bytes:
    return wav(np.full(n, level, dtype="<i2"))


def test_10k_mutated_frames_through_on_frame_never_raise() -> None:
    rng = random.Random(SEED)
    clock = FakeClock()
    source = satellite(clock, max_sites=4, max_frames_per_s=1e9, max_bytes_per_s=1e12)
    bases = good_frames()
    for i in range(10_000):
        clock.now += 0.01
        topic = AUDIO_TOPIC.format(rng.choice(("a", "b", "c", "d", "e\x00", "+", "$x", "")))
        if i % 7 == 0:
            topic = rng.choice(("hermes/audioServer", "", "#", "hermes/audioServer/x/y/z"))
        source.on_frame(topic, mutate_wav(rng, rng.choice(bases)))
    assert source.frames == 10_000
    assert source.rejections.by_reason.get("error", 0) == 0
    assert 0 < source.malformed_frames < 10_000
    assert len(source.sites) <= 4


def test_allowlist_and_site_cap_refuse_new_sites_without_keeping_state() -> None:
    clock = FakeClock()
    source = satellite(clock, max_sites=2, allow=frozenset({"kitchen", "hall", "den"}))
    for site in ("kitchen", "attacker", "hall", "den", "kitchen"):
        source.on_frame(AUDIO_TOPIC.format(site), frame())
    assert source.sites == ["kitchen", "hall"]
    assert source.rejections.by_reason == {"not_allowed": 1, "too_many_sites": 1}


def test_per_site_frame_and_byte_rate_limits() -> None:
    clock = FakeClock()
    source = satellite(clock, max_frames_per_s=10, max_bytes_per_s=1e9, burst_s=1.0)
    accepted = 0
    for _ in range(100):  # 100 frames in one second: 10 (the burst) + 10 refilled
        clock.now += 0.01
        before = source.rejected_frames
        source.on_frame(AUDIO_TOPIC.format("fast"), frame(160))
        accepted += source.rejected_frames == before
    assert 18 <= accepted <= 21
    source.on_frame(AUDIO_TOPIC.format("other"), frame(160))  # other sites are unaffected
    assert "other" in source.sites

    clock = FakeClock()
    source = satellite(clock, max_frames_per_s=1e6, max_bytes_per_s=20_000, burst_s=1.0)
    big = frame(4000)  # 8 kB
    results = []
    for _ in range(4):
        before = source.rejected_frames
        source.on_frame(AUDIO_TOPIC.format("loud"), big)
        results.append(source.rejected_frames == before)
    assert results == [True, True, False, False]
    assert source.rejections.by_reason == {"rate_limited": 2}


def test_audio_faster_than_real_time_is_refused_before_resampling() -> None:
    """8-bit 4 kHz audio is 250 s per MB: under the byte limit, a site could still send
    minutes of audio per second, and its resampling would starve every other site."""
    clock = FakeClock()
    source = satellite(clock, max_audio_ratio=2.0, burst_s=1.0)
    dense = wav(np.full(8000, 128, dtype=np.uint8), rate=4000, width=1)  # 2 s of audio
    good = frame(1600)  # 0.1 s at 16 kHz
    accepted = {"flood": 0, "good": 0}
    for _ in range(100):  # 10 s of wall time
        clock.now += 0.1
        for site, payload in (("flood", dense), ("good", good)):
            before = source.rejected_frames
            source.on_frame(AUDIO_TOPIC.format(site), payload)
            accepted[site] += source.rejected_frames == before
    assert accepted["good"] == 100  # real time is always within the limit
    assert 9 <= accepted["flood"] <= 12  # ~2 s of audio per second: one 2 s frame a second
    assert source.rejections.by_reason == {"rate_limited": 100 - accepted["flood"]}


def voiced(n: int = 1600) -> bytes:
    """Harmonics of 150 Hz with a little noise: what the VAD takes for speech."""
    t = np.arange(n) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8))
    noise = np.random.default_rng(SEED).standard_normal(n) * 0.05
    return wav(np.round((tone * 0.3 + noise) * 12_000).astype("<i2"))


def test_idle_sites_are_evicted_their_stream_ends_and_their_clock_carries_on() -> None:
    clock = FakeClock()
    source = satellite(clock, idle_evict_s=30.0)
    speech = frame(4000, level=3000)
    source.on_frame(AUDIO_TOPIC.format("kitchen"), speech)
    clock.now += 2.0
    source.check_idle()  # idle flush: open audio out, then a second of silence
    clock.now += 30.0
    source.check_idle()
    assert source.sites == []
    assert source.evicted_sites == 1
    blocks = list(source._queue)
    assert blocks[-1].last
    assert not any(b.last for b in blocks[:-1])
    ended_at = blocks[-1].end
    source._queue.clear()
    clock.now += 10.0
    source.on_frame(AUDIO_TOPIC.format("kitchen"), speech)
    source.stop()
    again = list(source._queue)
    # The new stream starts 10 s of wall time after the old one ended, not at 0.
    assert again[0].start == ended_at + 10 * SAMPLE_RATE


# ------------------------------------------------------- thousands of sites, real engine


class SegmentStage(QuietStage):
    """No model: one final per VAD segment."""

    name = "segments"

    def __init__(self, ctx: StageContext) -> None:
        self.stream = ctx.stream
        self.starts: dict[int, int] = {}

    def on_start(self, start: SegmentStart) -> None:
        self.starts[start.segment] = start.start

    def on_audio(self, audio: SegmentAudio) -> None:
        pass

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        start = self.starts.pop(end.segment) / SAMPLE_RATE
        return [CaptionFinal(stream=self.stream, start=start, end=end.end / SAMPLE_RATE,
                             segment=end.segment, text="x")]


def segment_stage(ctx: StageContext) -> Stage:
    return SegmentStage(ctx)


class FakeSource:
    """Hands the engine what a satellite source queued, without a network link."""

    description = "fake"

    def __init__(self, blocks: list[AudioBlock] | SatelliteSource) -> None:
        self.inner = blocks

    async def __aenter__(self) -> FakeSource:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        if isinstance(self.inner, SatelliteSource):
            async for block in self.inner.blocks():
                yield block
        else:
            for block in self.inner:
                yield block


@pytest.mark.slow
async def test_thousands_of_sites_keep_memory_streams_and_tasks_flat() -> None:
    clock = FakeClock()
    source = satellite(clock, max_sites=16, idle_evict_s=5.0)
    speech = voiced()
    finals = 0
    samples: list[tuple[int, int, int]] = []

    async def count(events: AsyncIterator[Event]) -> None:
        nonlocal finals
        async for event in events:
            finals += isinstance(event, CaptionFinal)

    def busy(engine: Engine) -> bool:
        return bool(source._queue) or any(s.queue.qsize() for s in engine.streams.values())

    def waves() -> Iterator[int]:
        yield from range(125)  # 16 sites each: 2,000 distinct site names

    async with InferenceWorker(name="cpu") as worker:
        # webrtcvad alone: it takes the synthetic voiced frames for speech (silero would not),
        # and the test is about what thousands of sites cost, not about the detector.
        engine = Engine(sources=[FakeSource(source)], stages=[segment_stage], worker=worker,
                        options=EngineOptions(vad=VadOptions(engine="webrtc"), levels=False))
        events = engine.subscribe("count")
        tracemalloc.start()
        try:
            async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
                tg.create_task(count(events))
                run = tg.create_task(engine.run())
                for wave_no in waves():
                    for i in range(16):
                        topic = AUDIO_TOPIC.format(f"fake-{wave_no}-{i}")
                        for payload in (speech, speech, speech):
                            source.on_frame(topic, payload)
                    clock.now += 6.0
                    source.check_idle()  # every site of this wave is evicted
                    while busy(engine):  # noqa: ASYNC110 (the engine drains the wave)
                        await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    if wave_no % 25 == 24:
                        samples.append((tracemalloc.get_traced_memory()[0],
                                        len(asyncio.all_tasks()), len(engine.streams)))
                source.stop()
                await run
        finally:
            tracemalloc.stop()
    assert source.evicted_sites == 2000
    assert engine.streams_ended == 2000
    assert finals == 2000  # every site's open segment was finalised when it was evicted
    assert len(source._clocks) == CLOCK_MEMORY
    memory = [m for m, _, _ in samples]
    tasks = [t for _, t, _ in samples]
    streams = [s for _, _, s in samples]
    assert max(streams) <= 16
    assert max(tasks) - min(tasks) <= 16
    # From 800 to 2,000 sites seen the traced memory stays flat (the clock table is full
    # from 1,024 on): 1,200 leaked streams would be tens of MB.
    assert memory[-1] - memory[1] < 1_000_000, memory


async def test_a_remote_resume_through_the_sink_keeps_the_engines_local_pause() -> None:
    engine = Engine(sources=[FakeSource([])], stages=[segment_stage],
                    worker=None,  # type: ignore[arg-type]
                    options=EngineOptions())
    sink = MqttSink(settings=MqttSettings(host="127.0.0.1"), options=MqttSinkOptions(
        site="den"), control=engine)
    engine.pause()  # the space key in the terminal app
    sink.on_message("harken/den/set", b'{"command": "resume", "id": "r1"}')
    assert engine.paused
    (reply,) = [json.loads(m.payload) for m in sink._outbox if m.topic == "harken/den/error"]
    assert (reply["code"], reply["id"]) == ("paused_locally", "r1")
    sink.on_message("harken/den/set", b"pause")
    (state,) = [json.loads(m.payload) for m in sink._outbox if m.topic == "harken/den/state"]
    assert state["paused_by"] == ["local", "remote"]
    engine.resume()
    assert not engine.paused


def test_the_mqtt_librarys_own_warnings_are_rate_limited() -> None:
    now = [0.0]
    limit = RateLimitFilter(interval_s=60, burst=3, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("mqtt", logging.WARNING, __file__, 1, msg, None, None)

    full = [limit.filter(record("Message queue is full. Discarding message."))
            for _ in range(1000)]
    assert full.count(True) == 3
    assert limit.filter(record("another message"))  # other messages keep their own budget
    now[0] = 61.0
    assert limit.filter(record("Message queue is full. Discarding message."))
    assert limit.suppressed == 997
    assert LIBRARY_LOG_FILTER in LIBRARY_LOG.filters


@pytest.mark.parametrize("speakers", [True, False])
async def test_the_speaker_entity_is_announced_only_with_diarization(speakers: bool) -> None:
    """Without diarization no speaker is ever published: the entity would stay unknown. Its
    config is cleared instead, so one an earlier `--diarize` run left goes away."""
    sink = MqttSink(settings=MqttSettings(host="127.0.0.1"), options=MqttSinkOptions(
        site="den", ha_discovery=True, speakers=speakers))
    sink.connected = True
    sink._add_site("den", announce=True)
    speaker = [m for m in sink._outbox
               if m.topic == "homeassistant/sensor/harken_den/current_speaker/config"]
    assert len(speaker) == 1
    assert speaker[0].retain
    assert (speaker[0].payload != b"") is speakers
    assert any(m.topic == "homeassistant/sensor/harken_den/last_caption/config" and m.payload
               for m in sink._outbox)
