"""Satellite sites and what Harken leaves on the broker for them: evicted sites are forgotten
(their retained Home Assistant configs and state cleared) unless named in advance, Home
Assistant ids never collide, and Hermes `siteId` is the name the satellite used. The
end-to-end tests run the real satellite source (fake clock), the real engine and the MQTT
sink against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from mosquitto import MOSQUITTO, SKIP_REASON, WAIT_S, Listener, Mosquitto
from test_mqtt_broker import FAST, running
from test_mqtt_hostile import AUDIO_TOPIC, FakeClock, FakeSource, segment_stage, voiced

from harken.app.config import HarkenConfig, MqttConfig
from harken.app.mqtt import MqttSetup
from harken.engine.events import (
    CaptionFinal,
    Event,
    Keyword,
    SpeakerTurn,
    StreamEnded,
)
from harken.engine.mqtt import sink as sink_module
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.mqtt.topics import (
    MAX_HERMES_SITE_ID,
    SiteNames,
    SiteTopics,
    ha_discovery,
    ha_site_id,
    satellite_id,
)
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.vad import VadOptions
from harken.engine.worker import InferenceWorker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    if MOSQUITTO is None:
        pytest.skip(SKIP_REASON)
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


# ------------------------------------------------------------------ Home Assistant ids


def test_ha_ids_of_plain_names_are_unchanged_and_stable() -> None:
    # Users' automations reference these: names that already are ids keep them.
    for site in ("kitchen", "den", "living_room-d2cbc083b0e02f0c", "hall-2", "a_b"):
        assert ha_site_id(site) == site
    hashed = ha_site_id("Kitchen")
    assert re.fullmatch(r"kitchen_[0-9a-f]{16}", hashed)
    # The same name, the same id, in every run and version: a hash of the name only.
    assert hashed == "kitchen_2acc6358f8109705"


@pytest.mark.parametrize(("a", "b"), [("Kitchen", "kitchen"), ("Küche", "Köche"),
                                      ("a.b", "a,b"), ("KITCHEN", "Kitchen"), ("a b", "a_b")])
def test_ha_ids_of_names_that_clean_alike_differ(a: str, b: str) -> None:
    assert ha_site_id(a) != ha_site_id(b)
    ids = [{(c.topic, c.config["unique_id"], c.config["device"]["identifiers"][0])
            for c in ha_discovery(SiteTopics(prefix="harken", site=site),
                                  availability="harken/hub/status", keywords=("stop",))}
           for site in (a, b)]
    for part in range(3):
        assert not {x[part] for x in ids[0]} & {x[part] for x in ids[1]}


def test_no_name_can_take_another_ones_hashed_id() -> None:
    """A clean name spelled like a hashed id is hashed itself, and random names that clean
    alike never share an id."""
    taken = ha_site_id("Kitchen")
    assert ha_site_id(taken) != taken
    rng = random.Random(7)
    names = {"".join(rng.choice("aAkK.-_ üÜ") for _ in range(rng.randint(1, 6)))
             for _ in range(20_000)}
    ids = {ha_site_id(name) for name in names}
    assert len(ids) == len(names)
    assert all(re.fullmatch(r"[a-z0-9_-]+", i) for i in ids)


# ------------------------------------------------------------------- raw site names


def test_site_names_keep_clean_utf8_names_bounded() -> None:
    names = SiteNames(max_names=3)
    names.record(satellite_id("living room"), "living room")
    assert names.raw(satellite_id("living room")) == "living room"
    assert names.raw("kitchen") == "kitchen"  # a clean name is its own site id
    names.record("x", "\ud800")  # not UTF-8: json could not write it; the id stands in
    names.record("y", "y" * (MAX_HERMES_SITE_ID + 1))
    assert (names.raw("x"), names.raw("y"), len(names)) == ("x", "y", 1)
    for i in range(5):
        names.record(f"s{i}", f"s {i}")
    assert len(names) == 3
    assert names.raw(satellite_id("living room")) == satellite_id("living room")


# --------------------------------------------------------------- the sink, with a bus


async def retained(broker: Mosquitto, topic: str) -> dict[str, bytes]:
    """What the broker retains under `topic` now: a fresh subscriber gets the retained
    messages first, then a marker it publishes itself."""
    marker = "harken-test/marker"
    async with Listener(broker.port, [topic, marker]) as late:
        await late.client.publish(marker, b"", qos=1)
        await late.expect(marker)
        return {m.topic: m.payload for m in late.messages if m.retain}


def final(stream: str, i: int = 0) -> CaptionFinal:
    return CaptionFinal(stream=stream, start=float(i), end=i + 0.5, segment=i, text="hello")


@pytest.mark.broker
async def test_an_evicted_site_is_forgotten_with_its_keywords_and_speaker(
        broker: Mosquitto) -> None:
    options = MqttSinkOptions(site="hub", prefix="p1", ha_prefix="ha1", sites_from_streams=True,
                              ha_discovery=True, keywords=("stop",), sites=("kitchen",), **FAST)
    sink = MqttSink(settings=MqttSettings(host=broker.host, port=broker.port), options=options)
    async with Listener(broker.port, ["ha1/#", "p1/#"]) as listener, running(sink) as bus:
        for site in ("ghost", "kitchen"):
            await bus.publish(final(site))
            await bus.publish(Keyword(stream=site, start=0.1, end=0.3, keyword="go",
                                      score=0.9, segment=0))
            await bus.publish(SpeakerTurn(stream=site, start=0.0, end=0.5, speaker="S1",
                                          score=1.0))
        await listener.expect("ha1/event/+/keyword_go/config", 2)
        await listener.expect("p1/+/speaker/current", 2)
        for site in ("ghost", "kitchen"):  # both evicted; kitchen was named in advance
            await bus.publish(StreamEnded(stream=site, start=1.0, end=1.0))
        await listener.expect("p1/kitchen/event/stream_ended")
        cleared = await listener.expect("#", 5, where=lambda m: not m.payload)
    assert {m.topic for m in cleared} == {
        "ha1/sensor/harken_ghost/last_caption/config",
        "ha1/sensor/harken_ghost/current_speaker/config",
        "ha1/event/harken_ghost/keyword_stop/config",
        "ha1/event/harken_ghost/keyword_go/config",
        "p1/ghost/speaker/current"}
    assert (sink.sites_forgotten, sink.retained_cleared) == (1, 5)
    assert sink.counters()["retained_cleared"] == 5
    left = await retained(broker, "ha1/#")
    assert {t.split("/")[2] for t in left} == {"harken_kitchen"}
    assert len(left) == 4
    assert set(await retained(broker, "p1/+/speaker/current")) == {"p1/kitchen/speaker/current"}


@pytest.mark.broker
async def test_with_forgetting_off_an_evicted_site_keeps_its_entities(
        broker: Mosquitto) -> None:
    options = MqttSinkOptions(site="hub", prefix="p2", ha_prefix="ha2", sites_from_streams=True,
                              ha_discovery=True, forget_evicted_sites=False, **FAST)
    sink = MqttSink(settings=MqttSettings(host=broker.host, port=broker.port), options=options)
    async with Listener(broker.port, ["p2/#"]) as listener, running(sink) as bus:
        await bus.publish(final("porch"))
        await bus.publish(StreamEnded(stream="porch", start=1.0, end=1.0))
        await listener.expect("p2/porch/event/stream_ended")
    assert sink.sites_forgotten == 0
    assert len(await retained(broker, "ha2/#")) == 2


@pytest.mark.broker
async def test_the_site_table_cap_forgets_the_least_recent_site(
        broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_module, "MAX_KNOWN_SITES", 3)
    options = MqttSinkOptions(site="hub", prefix="p3", ha_prefix="ha3", sites_from_streams=True,
                              ha_discovery=True, forget_evicted_sites=False,
                              sites=("kitchen",), **FAST)
    sink = MqttSink(settings=MqttSettings(host=broker.host, port=broker.port), options=options)
    async with Listener(broker.port, ["ha3/#"]) as listener, running(sink) as bus:
        for site in ("a", "b", "c", "d"):
            await bus.publish(final(site))
        await listener.expect("ha3/sensor/harken_d/+/config")
        await listener.expect("ha3/#", 4, where=lambda m: not m.payload)
    # kitchen (named in advance) stays whatever the table holds; a and b went, oldest first.
    left = await retained(broker, "ha3/#")
    assert {t.split("/")[2] for t in left} == {"harken_kitchen", "harken_c", "harken_d"}
    assert sink.sites_forgotten == 2


@pytest.mark.broker
async def test_hermes_site_id_is_the_name_the_satellite_used(broker: Mosquitto) -> None:
    names = SiteNames()
    odd = 'la "salle" \\ à manger'
    for raw in ("living room", odd, "x" * (MAX_HERMES_SITE_ID + 5)):
        names.record(satellite_id(raw), raw)
    options = MqttSinkOptions(site="hub", prefix="p4", sites_from_streams=True, hermes=True,
                              **FAST)
    sink = MqttSink(settings=MqttSettings(host=broker.host, port=broker.port), options=options,
                    site_names=names)
    topics = ["hermes/asr/textCaptured", "hermes/hotword/+/detected", "p4/+/caption/final"]
    async with Listener(broker.port, topics) as listener, running(sink) as bus:
        for raw in ("living room", odd, "x" * (MAX_HERMES_SITE_ID + 5), "kitchen"):
            await bus.publish(final(satellite_id(raw)))
        await bus.publish(Keyword(stream=satellite_id("living room"), start=0.1, end=0.3,
                                  keyword="go", score=0.9, segment=0))
        captured = await listener.expect("hermes/asr/textCaptured", 4)
        hot = await listener.expect("hermes/hotword/go/detected")
        finals = await listener.expect("p4/+/caption/final", 4)
    assert [json.loads(m.payload)["siteId"] for m in captured] == [
        "living room", odd, satellite_id("x" * (MAX_HERMES_SITE_ID + 5)), "kitchen"]
    assert hot[0].json()["siteId"] == "living room"
    # Harken's own topics keep the clean id.
    assert {(m.topic.split("/")[1], m.json()["site"]) for m in finals} == {
        (satellite_id(raw), satellite_id(raw))
        for raw in ("living room", odd, "x" * (MAX_HERMES_SITE_ID + 5), "kitchen")}


# ----------------------------------------------- end to end: source, engine, sink, broker


@pytest.mark.broker
async def test_satellites_end_to_end_forgotten_named_kept_ids_and_site_ids(
        broker: Mosquitto) -> None:
    """Four satellites speak and go idle: the one named in advance (`kitchen`) keeps its
    entities, the others' retained configs are cleared; `Kitchen` and `kitchen` are two
    devices; Hermes echoes `living room`. A forgotten one that speaks again is announced
    again."""
    clock = FakeClock()
    names = SiteNames()
    source = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                             limits=SiteLimits(idle_evict_s=5.0), clock=clock, names=names)
    sink = MqttSink(settings=MqttSettings(host=broker.host, port=broker.port),
                    options=MqttSinkOptions(site="hub", prefix="p5", ha_prefix="ha5",
                                            sites_from_streams=True, hermes=True,
                                            ha_discovery=True, sites=("kitchen",), **FAST),
                    site_names=names)
    speech = voiced()
    raw_sites = ["kitchen", "Kitchen", "living room", "ghost"]
    seen: list[Event] = []

    def speak(*sites: str) -> None:
        for site in sites:
            for _ in range(3):
                source.on_frame(AUDIO_TOPIC.format(site), speech)
        clock.now += 2.0
        source.check_idle()  # an idle flush ends each segment: a caption, an announcement

    def go_idle() -> None:
        clock.now += 6.0
        source.check_idle()  # every site is evicted

    async def collect(events: AsyncIterator[Event]) -> None:
        async for event in events:
            seen.append(event)

    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[FakeSource(source)], stages=[segment_stage], worker=worker,
                        options=EngineOptions(vad=VadOptions(engine="webrtc"), levels=False))
        sink.bind(engine)
        watched = ["ha5/#", "hermes/asr/textCaptured", "p5/+/caption/final"]
        async with asyncio.timeout(4 * WAIT_S), Listener(broker.port, watched) as listener, \
                asyncio.TaskGroup() as tg:
            tg.create_task(sink.consume(engine.subscribe(sink.name)))
            tg.create_task(collect(engine.subscribe("collect")))
            run = tg.create_task(engine.run())
            await sink.wait_connected()
            await listener.expect("ha5/sensor/harken_kitchen/+/config", 2)  # at start
            speak(*raw_sites)
            captured = await listener.expect("hermes/asr/textCaptured", 4)
            finals = await listener.expect("p5/+/caption/final", 4)
            configs = await listener.expect("ha5/+/+/+/config", 8)
            go_idle()
            await listener.expect("ha5/#", 6, where=lambda m: not m.payload)
            left = await retained(broker, "ha5/#")
            speak("ghost")  # it comes back: announced again, then forgotten again
            await listener.expect("ha5/sensor/harken_ghost/last_caption/config", 2,
                                  where=lambda m: bool(m.payload))
            go_idle()
            await listener.expect("ha5/sensor/harken_ghost/last_caption/config", 2,
                                  where=lambda m: not m.payload)
            source.stop()
            await run
    assert sorted(m.json()["siteId"] for m in captured) == sorted(raw_sites)
    assert {(m.topic, m.json()["site"]) for m in finals} == {
        (f"p5/{satellite_id(s)}/caption/final", satellite_id(s)) for s in raw_sites}
    # One device per site, each reading its own site's topic.
    by_device: dict[str, set[str]] = {}
    for m in configs:
        config = m.json()
        by_device.setdefault(config["device"]["identifiers"][0], set()).add(
            config["state_topic"].split("/")[1])
    assert by_device == {f"harken_{ha_site_id(satellite_id(s))}": {satellite_id(s)}
                         for s in raw_sites}
    assert {t.split("/")[2] for t in left} == {"harken_kitchen"}
    assert sink.sites_forgotten == 4
    assert sink.retained_cleared == 8
    # The engine says so once per evicted stream, after that stream's final.
    order = [(e.type, e.stream) for e in seen if e.type in ("caption_final", "stream_ended")]
    for site in map(satellite_id, raw_sites):
        mine = [t for t, s in order if s == site]
        assert mine == ["caption_final", "stream_ended"] * (2 if site == "ghost" else 1)


async def test_the_engine_ends_only_streams_its_source_ended_and_last() -> None:
    """`stream_ended` comes after every other event of a stream its source ended (an
    evicted satellite), and never for streams that end with the run."""
    clock = FakeClock()
    source = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                             limits=SiteLimits(idle_evict_s=5.0), clock=clock)
    speech = voiced()
    seen: list[Event] = []

    async def collect(events: AsyncIterator[Event]) -> None:
        async for event in events:
            seen.append(event)

    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[FakeSource(source)], stages=[segment_stage], worker=worker,
                        options=EngineOptions(vad=VadOptions(engine="webrtc"), levels=False))
        async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tg:
            tg.create_task(collect(engine.subscribe("collect")))
            run = tg.create_task(engine.run())
            for _ in range(3):
                source.on_frame(AUDIO_TOPIC.format("gone"), speech)
            clock.now += 6.0
            source.check_idle()  # `gone` is evicted
            for _ in range(3):
                source.on_frame(AUDIO_TOPIC.format("live"), speech)
            source.stop()  # `live` ends with the run
            await run
    ended = [e for e in seen if isinstance(e, StreamEnded)]
    assert [e.stream for e in ended] == ["gone"]
    gone = [e for e in seen if e.stream == "gone"]
    assert gone[-1] is ended[0]
    assert any(isinstance(e, CaptionFinal) for e in gone)
    assert any(isinstance(e, CaptionFinal) and e.stream == "live" for e in seen)


# ------------------------------------------------------------------------ the wiring


def test_setup_names_allowed_sites_by_their_stream_ids_and_passes_the_switch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARKEN_MQTT_PASSWORD", raising=False)
    config = HarkenConfig(mqtt=MqttConfig(site="hub", allowed_sites=["Living Room", "hall"],
                                          forget_evicted_sites=False))
    setup = MqttSetup(config, input_url="mqtt://sat/hermes/audioServer/+/audioFrame")
    # The entities announced at start read the topics the site's results go to.
    assert setup.sink_options.sites == (satellite_id("Living Room"), "hall")
    assert satellite_id("Living Room") != "Living Room"
    assert setup.sink_options.forget_evicted_sites is False
    assert MqttConfig().forget_evicted_sites is True
    assert setup.site_names.raw(satellite_id("Living Room")) == "Living Room"
    source = setup.source()
    assert isinstance(source, SatelliteSource)
    assert source.own_enabled is False  # an allowlist subscribes per site already
    (sink,) = setup.sinks()
    assert sink._site_names is setup.site_names


def test_own_subscriptions_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARKEN_MQTT_PASSWORD", raising=False)
    url = "mqtt://sat/hermes/audioServer/+/audioFrame"
    on = MqttSetup(HarkenConfig(mqtt=MqttConfig(site="hub")), input_url=url).source()
    off = MqttSetup(HarkenConfig(mqtt=MqttConfig(site="hub", own_subscriptions=False)),
                    input_url=url).source()
    assert isinstance(on, SatelliteSource)
    assert isinstance(off, SatelliteSource)
    assert (on.own_enabled, off.own_enabled) == (True, False)

