"""Floods: Harken's own incoming queue (the inbox) and the satellite decoder thread.

The inbox tests check the policy (per-family bounded FIFOs served in turn, drops counted by
kind) directly and through a real aiomqtt client at a real mosquitto flooded at full speed
by another process (tests/mqtt_flooder.py). The decoder tests run the satellite source's
thread. The last test is the issue's scenario: a full-speed flood on the HA status, control
and audio topics while a good satellite streams through the real engine.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
import wave
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from audio_gen import HAVE_ESPEAK, espeak, silence, trim
from mosquitto import MOSQUITTO, SKIP_REASON, WAIT_S, Listener, Mosquitto
from mqtt_flooder import Flooder
from test_mqtt_hostile import SEED, good_frames, mutate_wav, segment_stage

from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionFinal, Stats
from harken.engine.mqtt.client import MqttSettings, open_client
from harken.engine.mqtt.inbox import OTHER, OVERFLOW, Inbox
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.mqtt.topics import HERMES_AUDIO_FILTER, site_filters
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE

FRAME = 1024  # samples per Hermes audio frame


def message(topic: str, payload: bytes = b"x") -> aiomqtt.Message:
    return aiomqtt.Message(topic, payload, 0, False, 0, None)


def by_prefix(topic: str) -> str:
    return topic.split("/", 1)[0]


def wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------------- the policy


def test_inbox_serves_families_in_turn_and_keeps_each_familys_order() -> None:
    inbox = Inbox(classify=by_prefix)
    for i in range(100):
        inbox.put(message("flood", str(i).encode()))
    for i in range(3):
        inbox.put(message("control", str(i).encode()))
    out = [(m.topic.value, m.payload) for m in inbox.drain(1000)]
    # The three commands come out among the first six, not after the 100 flood messages.
    assert out[:6] == [("flood", b"0"), ("control", b"0"), ("flood", b"1"),
                       ("control", b"1"), ("flood", b"2"), ("control", b"2")]
    assert [p for t, p in out if t == "flood"] == [str(i).encode() for i in range(100)]
    assert len(inbox) == 0
    assert inbox.dropped_total == 0


def test_inbox_bounds_each_family_and_counts_drops_by_kind() -> None:
    inbox = Inbox(classify=by_prefix, max_messages=10, max_bytes=1000,
                  kinds=("audio", "control"))
    for _ in range(50):
        inbox.put(message("audio:kitchen/x"))  # `audio:kitchen` counts as `audio`
    for _ in range(5):
        assert inbox.put(message("control", b"c" * 300)) == (_ < 3)  # 1000 bytes hold 3
    assert inbox.put(message("audio:hall/x"))  # another site is a family of its own
    assert inbox.dropped == {"audio": 40, "control": 2, OVERFLOW: 0}
    assert inbox.counters() == {
        "incoming_received": 56, "incoming_dropped": 42, "incoming_queued": 14,
        "incoming_peak": 14, "incoming_dropped_audio": 40, "incoming_dropped_control": 2,
        "incoming_dropped_overflow": 0}
    assert len(list(inbox.drain(1000))) == 14
    assert inbox.put(message("control", b"c" * 300))  # room again once drained


def test_inbox_family_table_is_bounded_and_classifier_errors_count_as_other() -> None:
    def classify(topic: str) -> str:
        if topic == "bad":
            raise ValueError(topic)
        return topic

    inbox = Inbox(classify=classify, max_families=4, max_messages=2)
    for i in range(1000):  # a flood of new topic names
        inbox.put(message(f"site{i}"))
    assert len(inbox._families) == 4  # three names, then everything else in `overflow`
    assert inbox.dropped[OVERFLOW] == 1000 - 3 - 2
    inbox.put(message("bad"))
    assert inbox.classify_errors == 1
    assert len(inbox) == 5
    list(inbox.drain())
    assert inbox._families == {}  # nothing kept once drained
    inbox.put(message("bad"))
    assert [m.topic.value for m in inbox.drain()] == ["bad"]
    assert OTHER not in inbox._families


def test_allowed_sites_are_subscribed_one_by_one() -> None:
    allow = frozenset({"kitchen", "hall"})
    assert site_filters(HERMES_AUDIO_FILTER, allow) == [
        "hermes/audioServer/hall/audioFrame", "hermes/audioServer/kitchen/audioFrame"]
    assert site_filters(HERMES_AUDIO_FILTER, frozenset()) == [HERMES_AUDIO_FILTER]
    assert site_filters("audio/#", allow) == ["audio/#"]  # no site level to name
    # Any text but + # / and NUL is a topic level: "Living Room" is subscribed as it is.
    assert site_filters(HERMES_AUDIO_FILTER, frozenset({"Living Room"})) == [
        "hermes/audioServer/Living Room/audioFrame"]
    assert site_filters(HERMES_AUDIO_FILTER, frozenset({"a+b"})) == [HERMES_AUDIO_FILTER]


def test_an_allowed_site_whose_name_is_cleaned_still_streams() -> None:
    source = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="x",
                             limits=SiteLimits(allow=frozenset({"Living Room", "kitchen"})))
    frame = wav(np.zeros(1600, np.float32))
    source.on_frame("hermes/audioServer/Living Room/audioFrame", frame)
    source.on_frame("hermes/audioServer/Hall/audioFrame", frame)
    source.stop()
    assert source.rejections.by_reason == {"not_allowed": 1}  # Hall only
    assert [site.startswith("Living_Room-") for site in source.sites] == [True]


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_a_full_speed_flood_fills_only_its_own_family(tmp_path: Path) -> None:
    """A client that does not read: the flood overflows its own family (counted), while
    every QoS 1 message of another family is kept, in order."""
    inbox = Inbox(classify=by_prefix, max_messages=50, kinds=("flood", "good"))
    with Mosquitto(tmp_path / "broker") as broker:
        settings = MqttSettings(host=broker.host, port=broker.port)
        async with open_client(settings, client_id="inbox-test", inbox=inbox) as client, \
                Listener(broker.port, []) as good:
            await client.subscribe("flood/#", qos=0)
            await client.subscribe("good/#", qos=1)
            with Flooder(broker.port, [("flood/x", b"spam" * 8)]):
                for i in range(20):
                    await good.client.publish("good/x", str(i).encode(), qos=1)
                async with asyncio.timeout(WAIT_S):
                    while len(inbox._families.get("good", ())) < 20:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                    while inbox.dropped["flood"] < 100:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
            got = [m for m in inbox.drain(1000)]
    goods = [m.payload for m in got if m.topic.value == "good/x"]
    assert goods == [str(i).encode() for i in range(20)]
    assert inbox.dropped["good"] == 0
    assert inbox.dropped["flood"] >= 100
    assert inbox.peak <= 100  # two families of at most 50


# ------------------------------------------------------------------- the decoder


def tone(seconds: float, rate: int, *, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.01 * rng.standard_normal(t.size)


async def run_frames(source: SatelliteSource, frames: list[tuple[str, bytes]], *,
                     burst: bool) -> list[AudioBlock]:
    """Feeds frames (all at once with `burst`, else letting the decoder keep up) through the
    started source; returns every block it made."""
    blocks: list[AudioBlock] = []

    async def collect() -> None:
        async for block in source.blocks():
            blocks.append(block)

    async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tg:
        tg.create_task(collect())
        for topic, payload in frames:
            source.on_frame(topic, payload)
            if not burst:
                while source._pending:  # noqa: ASYNC110 (the decoder thread answers)
                    await asyncio.sleep(0.001)
        source.stop()
    return blocks


def by_stream(blocks: list[AudioBlock]) -> dict[str, list[AudioBlock]]:
    out: dict[str, list[AudioBlock]] = {}
    for block in blocks:
        out.setdefault(block.stream, []).append(block)
    return out


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_the_decoder_thread_gives_the_inline_result_site_by_site(tmp_path: Path) -> None:
    """Three sites at 48, 22.05 and 16 kHz, interleaved: decoded on the thread, each site's
    blocks are exactly those of decoding on the caller's thread, in order."""
    rates = {"a": 48_000, "b": 22_050, "c": 16_000}
    per_site = {site: [wav(chunk, rate) for chunk in np.array_split(
        tone(2.0, rate, seed=i), int(2.0 * rate) // FRAME)] for i, (site, rate) in
        enumerate(rates.items())}
    frames = [(f"hermes/audioServer/{site}/audioFrame", per_site[site][i])
              for i in range(min(map(len, per_site.values()))) for site in rates]
    limits = SiteLimits(max_audio_ratio=1e6, max_frames_per_s=1e6)

    inline = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="x",
                             limits=limits)
    for topic, payload in frames:
        inline.on_frame(topic, payload)
    inline.stop()
    expected = by_stream(list(inline._queue))

    with Mosquitto(tmp_path / "broker") as broker:
        async with SatelliteSource(settings=MqttSettings(host=broker.host, port=broker.port),
                                   client_id="t", limits=limits) as threaded:
            got = by_stream(await run_frames(threaded, frames, burst=True))
    assert threaded.decode_dropped == 0
    assert set(got) == set(expected) == set(rates)
    for site, blocks in expected.items():
        assert [b.start for b in got[site]] == [b.start for b in blocks]
        np.testing.assert_array_equal(np.concatenate([b.samples for b in got[site]]),
                                      np.concatenate([b.samples for b in blocks]))


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_frames_the_decoder_cannot_take_are_dropped_per_site_leaving_a_gap(
        tmp_path: Path) -> None:
    limits = SiteLimits(max_audio_ratio=1e6, max_frames_per_s=1e6)
    frame = wav(tone(FRAME / SAMPLE_RATE, SAMPLE_RATE, seed=1))
    flood = [("hermes/audioServer/loud/audioFrame", frame)] * 50
    with Mosquitto(tmp_path / "broker") as broker:
        async with SatelliteSource(settings=MqttSettings(host=broker.host, port=broker.port),
                                   client_id="t", limits=limits,
                                   max_pending_frames=4) as source:
            # 50 frames handed over without yielding: the decoder's answers cannot come back
            # in between, so 4 wait for it and 46 are dropped at the door.
            for topic, payload in flood:
                source.on_frame(topic, payload)
            assert source.stream_counters("loud")["site_decode_dropped"] == 46
            quiet = source.stream_counters("other")["site_decode_dropped"]
            async with asyncio.timeout(WAIT_S):
                while source._pending:  # noqa: ASYNC110 (the decoder thread answers)
                    await asyncio.sleep(0.001)
            blocks = await run_frames(source, [flood[0]], burst=False)
    assert source.decode_dropped == 46
    assert quiet == 0
    # 4 frames decoded, then a gap of 46 frames on the site's clock, then the last one.
    starts = [b.start for b in blocks]
    assert starts[0] == 0
    assert sum(b.samples.size for b in blocks) == 5 * FRAME
    assert blocks[-1].end == 51 * FRAME


# ---------------------------------------------------------------- the flood


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
@pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is needed to make test speech")
async def test_a_full_speed_flood_cannot_stop_a_good_satellite(tmp_path: Path) -> None:
    """Another process floods `homeassistant/status` and audio frames under made-up site
    names as fast as the broker takes them, a third sends nested JSON to `harken/hub/set`
    (200 a second: a flood of the control topic itself delays real commands, which only
    the broker's ACLs can prevent), while a good
    satellite streams two utterances at 1.5x real time and a pause command is sent (both
    QoS 1): every final of the good satellite arrives, the command is applied, the results
    connection never drops, and the flood is counted in its own kinds only.

    With mqtt.allowed_sites Harken subscribes per site, so the broker never sends the
    made-up sites' frames (without it they share the audio connection, and the broker
    delivers the good satellite's frames only as fast as that connection is read: docs)."""
    speech = trim(espeak("turn on the kitchen lights please", tmp_path))
    utterance = np.concatenate([silence(0.6), speech, silence(1.2)])
    good = [wav(chunk) for chunk in np.array_split(
        np.concatenate([utterance] * 2), 2 * utterance.size // FRAME)]
    quiet = wav(np.zeros(FRAME))
    flood = [("homeassistant/status", b"online"),
             *[(f"hermes/audioServer/fake{i}/audioFrame", quiet) for i in range(30)],
             ("hermes/audioServer/fake0/audioFrame", b"RIFF" + bytes(60))]
    # (The satellite's own topic is not flooded: only the broker's ACLs can keep others
    # from publishing there; Harken's per-site rate limits then protect the other sites.)
    with Mosquitto(tmp_path / "broker") as broker:
        settings = MqttSettings(host=broker.host, port=broker.port)
        source = SatelliteSource(settings=settings, client_id="harken-hub-audio",
                                 limits=SiteLimits(allow=frozenset({"kitchen"})),
                                 backoff_initial_s=0.05, backoff_max_s=0.2)
        sink = MqttSink(settings=settings, options=MqttSinkOptions(
            site="hub", sites_from_streams=True, ha_discovery=True, backoff_initial_s=0.05,
            backoff_max_s=0.2))
        async with InferenceWorker(name="cpu") as worker:
            engine = Engine(sources=[source], stages=[segment_stage], worker=worker,
                            options=EngineOptions(live=False))
            sink.bind(engine)
            produced: list[CaptionFinal] = []
            stats: list[Stats] = []

            async def collect() -> None:
                async for event in events:
                    if isinstance(event, CaptionFinal):
                        produced.append(event)
                    elif isinstance(event, Stats) and event.stream == "kitchen":
                        stats.append(event)

            events = engine.subscribe("collect")
            async with asyncio.timeout(6 * WAIT_S), \
                    Listener(broker.port, ["harken/kitchen/caption/final",
                                           "harken/hub/state"]) as listener, \
                    asyncio.TaskGroup() as tg:
                tg.create_task(sink.consume(engine.subscribe(sink.name)))
                tg.create_task(collect())
                run = tg.create_task(engine.run())
                await source.wait_connected()
                await sink.wait_connected()
                send = listener.client.publish
                await send("hermes/audioServer/kitchen/audioFrame", good[0], qos=1)
                async with asyncio.timeout(WAIT_S):
                    while "kitchen" not in source.sites:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                with Flooder(broker.port, flood) as flooder, \
                        Flooder(broker.port, [("harken/hub/set", b"[" * 4000)], rate_hz=200):
                    start = time.monotonic()
                    for i, frame in enumerate(good[1:]):
                        await send("hermes/audioServer/kitchen/audioFrame", frame, qos=1)
                        due = start + (i + 1) * FRAME / SAMPLE_RATE / 1.5
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    total = len(good) * FRAME

                    def behind() -> bool:
                        site = source._sites.get("kitchen")
                        return site is None or site.dsp is None or \
                            site.dsp.blocker.position < total - FRAME

                    async with asyncio.timeout(WAIT_S):
                        while behind():  # noqa: ASYNC110 (waits for the broker's delivery)
                            await asyncio.sleep(0.05)
                    await send("harken/hub/set", b'{"command": "pause", "id": "p"}', qos=1)
                    paused = await listener.expect("harken/hub/state",
                                                   where=lambda m: m.json()["paused"])
                source.stop()
                await run
                expected = {(f.start, f.end) for f in produced if f.stream == "kitchen"}
                got = await listener.expect("harken/kitchen/caption/final", len(expected))
    assert flooder.sent > 10_000
    # The good satellite: every frame decoded, every final delivered, the command applied.
    assert len(expected) >= 2
    assert {(m.json()["start"], m.json()["end"]) for m in got} == expected
    assert json.loads(paused[-1].payload)["last_command"] == {"command": "pause", "id": "p"}
    assert run.exception() is None
    kitchen = source.stream_counters("kitchen")
    assert kitchen["site_decode_dropped"] == 0
    assert source.inbox.dropped_total == 0
    # Per-site subscriptions: of the audio flood, nothing reached Harken.
    assert source.inbox.received == len(good)
    assert source.rejections.total == 0
    # The results connection was never lost: the flood came in on the subscriptions'.
    assert sink.reconnects == 0
    assert sink.connect_failures == 0
    # The flood, counted where it belongs.
    assert sink.rejections.by_reason["invalid_json"] > 200
    assert sink.ha_status_coalesced > 100
    assert sink.inbox.received > 200
    assert sink.inbox.dropped["control"] + sink.inbox.dropped["ha_status"] == \
        sink.inbox.dropped_total
    counters = sink.counters()
    assert counters["incoming_received"] == sink.inbox.received
    # The same figures reach the stream's stats (the JSONL/MQTT stats event).
    assert stats
    assert "incoming_dropped_audio_new" in stats[-1].counters
    assert stats[-1].counters["site_decode_dropped"] == 0


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_10k_mutated_frames_through_the_decoder_thread_never_escape(
        tmp_path: Path) -> None:
    """The fuzz of test_mqtt_hostile, through the thread: every failure is one counted
    rejection, the thread lives on and still decodes the good frames after them."""
    rng = random.Random(SEED)
    bases = good_frames()
    limits = SiteLimits(max_sites=4, max_frames_per_s=1e9, max_bytes_per_s=1e12,
                        max_audio_ratio=1e9)
    with Mosquitto(tmp_path / "broker") as broker:
        async with SatelliteSource(settings=MqttSettings(host=broker.host, port=broker.port),
                                   client_id="t", limits=limits) as source:
            async with asyncio.timeout(4 * WAIT_S):
                for i in range(10_000):
                    site = rng.choice(("a", "b", "c", "d"))
                    source.on_frame(f"hermes/audioServer/{site}/audioFrame",
                                    mutate_wav(rng, rng.choice(bases)))
                    if i % 50 == 49:
                        while source._pending:  # noqa: ASYNC110 (the decoder answers)
                            await asyncio.sleep(0.001)
            thread = source._thread
            assert thread is not None
            assert thread.is_alive()
            blocks = await run_frames(source, [("hermes/audioServer/a/audioFrame",
                                                bases[0])] * 20, burst=False)
    assert source.frames == 10_020
    assert source.rejections.by_reason.get("error", 0) == 0
    assert 0 < source.malformed_frames < 10_000
    assert source.decode_dropped == 0
    assert blocks  # the good frames after the fuzz were decoded
    assert not thread.is_alive()  # and the thread ended with the source
