"""Without an allowlist, an admitted satellite also gets its own subscription on a second
connection (engine/mqtt/satellites.py, engine/mqtt/handover.py), against a real mosquitto:
the hand-over takes every frame once and in order, an evicted site is unsubscribed, a broker
restart resubscribes, a flood under made-up names no longer costs the satellite its audio,
and a site that floods never keeps a subscription of its own."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from mosquitto import MOSQUITTO, SKIP_REASON, WAIT_S, Mosquitto
from mqtt_flooder import Flooder

from harken.engine.audio import AudioBlock
from harken.engine.mqtt import satellites
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.handover import Phase
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits
from harken.models.audio import SAMPLE_RATE

FRAME = 1024  # samples per frame, at 16 kHz: 64 ms
TOPIC = "hermes/audioServer/kitchen/audioFrame"
STEP = 8  # int16 value step between frames: frame i holds (i + 1) * STEP throughout


def numbered(i: int, samples: int = FRAME) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.full(samples, (i + 1) * STEP, dtype="<i2").tobytes())
    return buf.getvalue()


def frame_ids(blocks: list[AudioBlock], stream: str = "kitchen", *, whole: bool = True
              ) -> list[int]:
    """The frames a stream's audio holds, in order (silence from idle flushes left out);
    each must be whole (but the last while it streams)."""
    audio = np.concatenate([b.samples for b in blocks if b.stream == stream] or [np.zeros(0)])
    values = np.rint(audio * 32768).astype(np.int64)
    ids: list[int] = []
    edges = np.flatnonzero(np.diff(values)) + 1
    for run in np.split(values, edges):
        if run.size and run[0] != 0:
            assert run.size % FRAME == 0 or not whole, f"a frame cut short: {run.size}"
            ids += [int(run[0]) // STEP - 1] * (run.size // FRAME)
    return ids


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not check():  # noqa: ASYNC110 (the broker and the decoder thread answer)
            await asyncio.sleep(0.02)
    assert check(), what


async def publish(port: int, frames: range, *, on_each: Callable[[int], None] | None = None
                  ) -> None:
    """A satellite: numbered frames in real time, QoS 0."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        start = time.monotonic()
        for n, i in enumerate(frames):
            await client.publish(TOPIC, numbered(i), qos=0)
            if on_each is not None:
                on_each(i)
            due = start + (n + 1) * FRAME / SAMPLE_RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))


@pytest.fixture(autouse=True)
def quick_promotion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(satellites, "OWN_AFTER_S", 0.3)


def source_for(broker: Mosquitto, *, idle_evict_s: float = satellites.IDLE_EVICT_S
               ) -> SatelliteSource:
    return SatelliteSource(settings=MqttSettings(host=broker.host, port=broker.port),
                           client_id="harken-hub-audio",
                           limits=SiteLimits(idle_evict_s=idle_evict_s),
                           backoff_initial_s=0.05, backoff_max_s=0.2)


async def collect(source: SatelliteSource, blocks: list[AudioBlock]) -> None:
    async for block in source.blocks():
        blocks.append(block)


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_hand_over_takes_every_frame_once_then_eviction_unsubscribes(
        tmp_path: Path) -> None:
    blocks: list[AudioBlock] = []
    with Mosquitto(tmp_path / "broker") as broker:
        source = source_for(broker, idle_evict_s=1.5)
        async with source, asyncio.TaskGroup() as tg:
            tg.create_task(collect(source, blocks))
            await source.wait_connected()
            await publish(broker.port, range(60))  # 3.8 s: promoted after 0.3 s
            await until(lambda: source.own_unsubscribes == 1, "evicted: unsubscribed")
            source.stop()
    assert source.own_subscribes == 1
    assert source.handovers == 1
    assert source.evicted_sites == 1
    assert source.own_counters()["own_sites"] == 0
    # Across the hand-over: every frame once, in order (no flood: nothing was dropped).
    assert frame_ids(blocks) == list(range(60))
    assert source.rejections.total == 0


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_a_broker_restart_resubscribes_the_admitted_sites(tmp_path: Path) -> None:
    blocks: list[AudioBlock] = []
    with Mosquitto(tmp_path / "broker") as broker:
        source = source_for(broker)
        async with source, asyncio.TaskGroup() as tg:
            tg.create_task(collect(source, blocks))
            await source.wait_connected()
            await publish(broker.port, range(20))
            await until(lambda: source.handovers == 1, "handed over")
            await asyncio.to_thread(broker.restart)
            await until(lambda: source.own_subscribes == 2 and source.connects == 2,
                        "both connections back, the site resubscribed")
            await publish(broker.port, range(20, 40))
            await until(lambda: 39 in frame_ids(blocks, whole=False), "the last frame")
            handover = source._handovers.get(TOPIC)  # (stopping hands every site back)
            source.stop()
    assert source.own_connects == 2
    assert source.own_released == 2  # at the restart (its frames came from the wildcard), at stop
    assert handover is not None
    assert handover.phase is Phase.OWN
    ids = frame_ids(blocks)
    assert ids == sorted(set(ids))  # no frame twice, none out of order
    assert set(range(20, 40)) <= set(ids)  # after the restart, all of them


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_a_flood_under_made_up_names_no_longer_costs_the_satellite_its_audio(
        tmp_path: Path) -> None:
    """Without an allowlist. The made-up sites send 1 s of audio per frame, far faster than
    real time even through the broker's drops, so none of them is promoted."""
    blocks: list[AudioBlock] = []
    fakes = [(f"hermes/audioServer/fake{i}/audioFrame", numbered(900, SAMPLE_RATE))
             for i in range(20)]
    handed_over_at: list[int] = []

    def note(i: int) -> None:
        if not handed_over_at and source.handovers:
            handed_over_at.append(i)

    with Mosquitto(tmp_path / "broker") as broker:
        source = source_for(broker)
        async with source, asyncio.TaskGroup() as tg:
            tg.create_task(collect(source, blocks))
            await source.wait_connected()
            satellite = tg.create_task(publish(broker.port, range(80), on_each=note))
            await until(lambda: "kitchen" in source.sites, "the satellite is live")
            with Flooder(broker.port, fakes) as flooder:
                await satellite
                await until(lambda: 79 in frame_ids(blocks, whole=False), "the last frame")
            source.stop()
    assert flooder.sent > 10_000
    assert source.handovers == 1
    assert source.own_subscribes == 1  # the satellite's only: no made-up site promoted
    assert handed_over_at
    ids = frame_ids(blocks)
    assert ids == sorted(set(ids))
    # Everything published after the hand-over arrived, whatever the wildcard lost.
    assert set(range(handed_over_at[0] + 1, 80)) <= set(ids)
    assert source.own_inbox.dropped_total == 0


def test_a_site_over_its_rate_limit_loses_its_own_subscription() -> None:
    now = [0.0]
    source = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                             limits=SiteLimits(max_frames_per_s=20, burst_s=1.0,
                                               idle_evict_s=100.0),
                             clock=lambda: now[0])
    source._own_connected = True  # as when the second connection is up
    for i in range(8):  # 0.5 s of real-time audio
        now[0] = i * FRAME / SAMPLE_RATE
        source.on_frame(TOPIC, numbered(i))
    now[0] = 0.6
    source.check_idle()
    assert TOPIC in source._handovers
    for i in range(40):  # then a flood on its topic (taken from the wildcard until handed over)
        source.on_wild_frame(TOPIC, numbered(100 + i))
    assert source.own_demoted == 1
    assert TOPIC not in source._handovers
    source.check_idle()
    assert TOPIC not in source._handovers  # not promoted again before the cool-down
    assert source.own_counters()["own_sites"] == 0
    source.on_own_frame(TOPIC, numbered(0))  # late on the old subscription: dropped
    assert source.own_stale == 1
    now[0] = 0.6 + satellites.OWN_COOLDOWN_S - 0.1
    source.check_idle()
    assert TOPIC not in source._handovers
    now[0] = 0.6 + satellites.OWN_COOLDOWN_S
    source.check_idle()  # quiet since: it may have its own again
    assert TOPIC in source._handovers


def test_odd_frames_anyone_can_publish_neither_block_nor_end_the_own_subscription() -> None:
    """One malformed frame, or a few over the rate, on a real satellite's topic must not push
    it back onto the flooded wildcard (an attacker could do it twice a minute)."""
    now = [0.0]
    source = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                             limits=SiteLimits(max_frames_per_s=20, burst_s=1.0,
                                               idle_evict_s=100.0),
                             clock=lambda: now[0])
    source._own_connected = True
    for i in range(8):
        now[0] = i * FRAME / SAMPLE_RATE
        source.on_frame(TOPIC, numbered(i) if i != 4 else b"RIFF" + bytes(40))
    now[0] = 0.6
    source.check_idle()
    assert source.malformed_frames == 1
    assert TOPIC in source._handovers  # promoted all the same
    for i in range(satellites.OWN_DEMOTE_REFUSALS + 5):  # a short burst: a few refused
        source.on_wild_frame(TOPIC, numbered(100 + i))
    refused = source.rejections.by_reason.get("rate_limited", 0)
    assert 0 < refused < satellites.OWN_DEMOTE_REFUSALS
    assert source.own_demoted == 0
    assert TOPIC in source._handovers


def test_faster_than_real_time_sites_and_the_allowlist_get_no_own_subscription() -> None:
    now = [0.0]
    source = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                             clock=lambda: now[0])
    source._own_connected = True
    for i in range(20):  # 1.3 s of audio in 0.5 s
        now[0] = i * 0.025
        source.on_frame(TOPIC, numbered(i))
    now[0] = 0.5
    source.check_idle()
    assert not source._handovers
    allowed = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                              limits=SiteLimits(allow=frozenset({"kitchen"})))
    assert not allowed.own_enabled  # its subscriptions are per site already


def test_when_the_own_connection_drops_its_sites_go_back_to_the_wildcard_at_once() -> None:
    now = [0.0]
    source = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                             clock=lambda: now[0])
    source._own_connected = True
    for i in range(8):
        now[0] = i * FRAME / SAMPLE_RATE
        source.on_frame(TOPIC, numbered(i))
    now[0] = 0.6
    source.check_idle()
    assert TOPIC in source._handovers
    source._own_lost()  # as _own_link does when the connection drops
    source._own_connected = False
    assert TOPIC not in source._handovers
    assert source.own_released == 1
    before = source.frames
    for i in range(8, 20):  # the satellite streams on: every frame is taken from the wildcard
        now[0] = i * FRAME / SAMPLE_RATE
        source.on_wild_frame(TOPIC, numbered(i))
        source.check_idle()
    assert source.frames == before + 12
    assert TOPIC not in source._handovers  # not promoted while the connection is down
    source._own_connected = True
    source.check_idle()
    assert TOPIC in source._handovers  # and handed over again once it is back
    assert source.rejections.total == 0
