"""The MQTT sink against a real mosquitto on loopback: every topic, retained status and the
last will, Home Assistant discovery, the control topic, TLS, passwords, broker restarts,
the bounded outbox, and the embedded broker."""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mosquitto import (
    MOSQUITTO,
    SKIP_REASON,
    WAIT_S,
    Listener,
    Mosquitto,
    Pki,
    free_port,
    make_pki,
    password_file,
)
from tui_fakes import KeywordEvent, SpeakerTurnEvent, TranslationEvent

from harken.app.config import HarkenConfig, MqttConfig
from harken.app.mqtt import MqttSetup
from harken.engine.bus import EventBus
from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    Level,
    SpeechEnded,
    SpeechStarted,
    Stats,
    StreamError,
    Word,
)
from harken.engine.mqtt.broker import EmbeddedBroker
from harken.engine.mqtt.client import MqttSettings, TlsOptions
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.mqtt.topics import event_payload
from harken.models.errors import BrokerError, MqttConfigError

pytestmark = [pytest.mark.broker, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]

FAST: dict[str, Any] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2,
                        "ha_announce_interval_s": 0.2}


@dataclass(frozen=True, slots=True, kw_only=True)
class SoundEvent(Event):
    """A type this module has never heard of: routed generically by its name."""

    type: ClassVar[str] = "sound_event"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test CA and certificates")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Mosquitto]:
    """Two listeners: plain on `port`, TLS (server certificate from the test CA) on
    `tls_port`."""
    with Mosquitto(tmp_path_factory.mktemp("tls-broker"), tls=pki) as b:
        yield b


def plain(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port)


@asynccontextmanager
async def running(sink: MqttSink, *, maxsize: int = 256) -> AsyncIterator[EventBus]:
    """The sink consuming a bus, connected; on exit the bus closes and the sink drains."""
    bus = EventBus()
    sub = bus.subscribe(sink.name, maxsize=maxsize)
    async with asyncio.timeout(3 * WAIT_S), asyncio.TaskGroup() as tg:
        tg.create_task(sink.consume(sub), name="sink")
        try:
            async with asyncio.timeout(WAIT_S):
                await sink.wait_connected()
            yield bus
        finally:
            await bus.close()


def final(i: int, *, stream: str = "mic", text: str | None = None) -> CaptionFinal:
    return CaptionFinal(stream=stream, start=float(i), end=i + 0.8, segment=i,
                        text=text if text is not None else f"final {i}")


# ------------------------------------------------------------------ every topic


async def test_every_topic_round_trips_with_the_event_schema(broker: Mosquitto) -> None:
    sink = MqttSink(settings=plain(broker), options=MqttSinkOptions(
        site="rt", hermes=True, levels=True, partial_interval_s=0.0, **FAST))
    events: list[Event] = [
        SpeechStarted(stream="mic", start=1.0, end=1.0, segment=0),
        CaptionPartial(stream="mic", start=1.0, end=1.5, segment=0, text="turn"),
        CaptionFinal(stream="mic", start=1.0, end=2.0, segment=0, text="turn it on",
                     words=(Word(word="turn", start=1.0, end=1.3),)),
        SpeechEnded(stream="mic", start=1.0, end=2.0, segment=0),
        SpeakerTurnEvent(stream="mic", start=1.0, end=2.0, speaker="S1", score=0.7),
        KeywordEvent(stream="mic", start=1.1, end=1.4, keyword="lights on", score=0.9),
        TranslationEvent(stream="mic", start=1.0, end=2.0, text="mach es an", lang="de",
                         segment=0),
        StreamError(stream="mic", start=2.0, end=2.0, message="device hiccup"),
        Level(stream="mic", start=2.0, end=2.1, dbfs=-30.0, speech=False),
        SoundEvent(stream="mic", start=2.0, end=2.5),
        Stats(stream="mic", start=0.0, end=2.5, counters={"segments": 1}),
    ]
    expected_topics = [
        "harken/rt/speech/started", "harken/rt/caption/partial", "harken/rt/caption/final",
        "harken/rt/speech/ended", "harken/rt/speaker/turn", "harken/rt/keyword/lights_on",
        "harken/rt/translation/de", "harken/rt/error", "harken/rt/level",
        "harken/rt/event/sound_event", "harken/rt/stats"]
    async with Listener(broker.port, ["harken/rt/#", "hermes/#"]) as listener:
        async with running(sink) as bus:
            await listener.expect("harken/rt/status", where=lambda m: m.payload == b"online")
            for event in events:
                await bus.publish(event)
                await asyncio.sleep(0)  # let QoS 0 ones go out one by one, not as a backlog
            for event, topic in zip(events, expected_topics, strict=True):
                (got,) = await listener.expect(topic)
                body = got.json()
                if event.type == "stats":
                    assert body.pop("mqtt")["connected"] == 1  # the sink's own counters
                assert body == event_payload(event, site="rt"), topic
            (current,) = await listener.expect("harken/rt/speaker/current")
            assert current.json()["speaker"] == "S1"
            (text,) = await listener.expect("hermes/asr/textCaptured")
            assert (text.json()["text"], text.json()["siteId"]) == ("turn it on", "rt")
            (hot,) = await listener.expect("hermes/hotword/lights_on/detected")
            assert (hot.json()["modelId"], hot.json()["siteId"]) == ("lights on", "rt")
        await listener.expect("harken/rt/status", where=lambda m: m.payload == b"offline")
    assert (sink.published, sink.qos0_dropped, sink.outbox_dropped) == (14, 0, 0)
    # A late subscriber sees the retained state: Harken went offline, S1 spoke last.
    async with Listener(broker.port, ["harken/rt/status", "harken/rt/speaker/current"]) as late:
        (status,) = await late.expect("harken/rt/status")
        assert (status.payload, status.retain) == (b"offline", True)
        (speaker,) = await late.expect("harken/rt/speaker/current")
        assert speaker.retain
        assert speaker.json()["speaker"] == "S1"
        assert not late.on("harken/rt/caption/final")  # finals are events, not state


async def test_partials_are_rate_limited_per_stream(broker: Mosquitto) -> None:
    sink = MqttSink(settings=plain(broker), options=MqttSinkOptions(
        site="rate", partial_interval_s=60.0, **FAST))
    async with Listener(broker.port, ["harken/rate/caption/#"]) as listener, \
            running(sink) as bus:
        for i in range(5):
            for stream in ("a", "b"):
                await bus.publish(CaptionPartial(stream=stream, start=0.0, end=i, segment=0,
                                                 text=f"{stream}{i}"))
        await bus.publish(final(0))
        await listener.expect("harken/rate/caption/final")
    assert sorted(m.json()["text"] for m in listener.on("harken/rate/caption/partial")) == \
        ["a0", "b0"]
    assert sink.partials_rate_limited == 8


# --------------------------------------------------------------- status, last will


CHILD = """
import asyncio, sys
from harken.engine.bus import EventBus
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions

async def main():
    sink = MqttSink(settings=MqttSettings(host="127.0.0.1", port=int(sys.argv[1])),
                    options=MqttSinkOptions(site=sys.argv[2]))
    task = asyncio.create_task(sink.consume(EventBus().subscribe("mqtt")))
    await sink.wait_connected()
    print("connected", flush=True)
    await task

asyncio.run(main())
"""


async def test_last_will_marks_a_killed_process_offline(broker: Mosquitto) -> None:
    async with Listener(broker.port, ["harken/will/status"]) as listener:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(broker.port), "will",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            (online,) = await listener.expect("harken/will/status")
            assert online.payload == b"online"
            child.kill()  # SIGKILL: no goodbye, the broker must send the will
            await listener.expect("harken/will/status", 2)
        finally:
            if child.returncode is None:
                child.kill()
            async with asyncio.timeout(WAIT_S):
                await child.wait()
    assert [m.payload for m in listener.on("harken/will/status")] == [b"online", b"offline"]
    async with Listener(broker.port, ["harken/will/status"]) as late:
        (status,) = await late.expect("harken/will/status")
        assert (status.payload, status.retain) == (b"offline", True)


async def test_a_cancelled_run_says_offline_itself(broker: Mosquitto) -> None:
    """Ctrl-C cancels the sink: its clean disconnect suppresses the will, so it publishes
    `offline` on its way out."""
    sink = MqttSink(settings=plain(broker), options=MqttSinkOptions(site="cancel", **FAST))
    async with Listener(broker.port, ["harken/cancel/status"]) as listener:
        task = asyncio.create_task(sink.consume(EventBus().subscribe("mqtt")))
        await listener.expect("harken/cancel/status")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await listener.expect("harken/cancel/status", 2)
    assert [m.payload for m in listener.on("harken/cancel/status")] == [b"online", b"offline"]
    assert not sink.connected


# -------------------------------------------------------------- Home Assistant


async def test_ha_discovery_is_retained_dynamic_and_republished_on_ha_restart(
        broker: Mosquitto) -> None:
    sink = MqttSink(settings=plain(broker), options=MqttSinkOptions(
        site="ha", ha_discovery=True, keywords=("stop",), version="9.9", **FAST))
    configs = "homeassistant/+/harken_ha/+/config"
    async with Listener(broker.port, [configs]) as listener, running(sink) as bus:
        first = await listener.expect(configs, 3)
        by_topic = {m.topic: m.json() for m in first}
        caption = by_topic["homeassistant/sensor/harken_ha/last_caption/config"]
        speaker = by_topic["homeassistant/sensor/harken_ha/current_speaker/config"]
        stop = by_topic["homeassistant/event/harken_ha/keyword_stop/config"]
        assert caption["state_topic"] == "harken/ha/caption/final"
        assert speaker["state_topic"] == "harken/ha/speaker/current"
        assert stop["state_topic"] == "harken/ha/keyword/stop"
        assert {c["availability_topic"] for c in by_topic.values()} == {"harken/ha/status"}
        # A keyword nobody announced gets its entity before its first event.
        await bus.publish(KeywordEvent(stream="mic", start=1.0, end=1.2, keyword="go",
                                       score=0.5))
        await listener.expect("homeassistant/event/harken_ha/keyword_go/config")
        # Home Assistant restarts: everything is announced again.
        await listener.client.publish("homeassistant/status", b"online", qos=1)
        again = await listener.expect(configs, 8)
    assert {m.topic for m in again[4:]} == {
        "homeassistant/sensor/harken_ha/last_caption/config",
        "homeassistant/sensor/harken_ha/current_speaker/config",
        "homeassistant/event/harken_ha/keyword_stop/config",
        "homeassistant/event/harken_ha/keyword_go/config"}
    async with Listener(broker.port, [configs]) as late:
        retained = await late.expect(configs, 4)
        assert all(m.retain for m in retained)


# ---------------------------------------------------------------------- control


class Target:
    def __init__(self) -> None:
        self.paused = False

    def pause(self, *, by: str = "local") -> None:
        self.paused = True

    def resume(self, *, by: str = "local") -> None:
        self.paused = False


async def test_control_topic_applies_commands_and_answers_bad_ones_on_error(
        broker: Mosquitto) -> None:
    target = Target()
    sink = MqttSink(settings=plain(broker), options=MqttSinkOptions(site="ctl", **FAST),
                    control=target)
    async with Listener(broker.port, ["harken/ctl/#"]) as listener, running(sink) as bus:
        send = listener.client.publish
        await listener.expect("harken/ctl/state")  # published on connect
        await send("harken/ctl/set", b'{"command": "pause", "id": "p1"}', qos=1)
        (paused,) = await listener.expect(
            "harken/ctl/state", where=lambda m: m.json()["paused"])
        assert paused.json()["last_command"] == \
                {"command": "pause", "id": "p1"}
        assert target.paused
        await send("harken/ctl/set", b"{not json", qos=1)
        await send("harken/ctl/set", b'{"command": "keywords", "keywords": ["stop"], '
                                     b'"id": "k1"}', qos=1)
        await send("harken/ctl/set", b'{"command": "self-destruct"}', qos=1)
        errors = await listener.expect("harken/ctl/error", 3)
        assert [(e.json()["code"], e.json()["id"]) for e in errors] == [
            ("invalid_json", None), ("unsupported", "k1"), ("unknown_command", None)]
        assert "keyword" in errors[1].json()["message"]
        assert target.paused  # bad commands changed nothing
        await send("harken/ctl/set", b"resume", qos=1)
        await listener.expect("harken/ctl/state",
                              where=lambda m: m.json()["last_command"] is not None and
                              m.json()["last_command"]["command"] == "resume")
        assert not target.paused
        await bus.publish(final(1))  # and results still flow
        await listener.expect("harken/ctl/caption/final")
    assert (sink.commands_applied, sink.commands_rejected) == (2, 3)
    async with Listener(broker.port, ["harken/ctl/state"]) as late:  # state is retained
        (state,) = await late.expect("harken/ctl/state")
        assert state.retain
        assert state.json()["last_command"] == {"command": "resume", "id": None}


# -------------------------------------------------------------------------- TLS


async def test_tls_verifies_the_broker_against_the_test_ca(tls_broker: Mosquitto,
                                                          pki: Pki) -> None:
    broker = tls_broker
    assert broker.tls_port is not None
    good = MqttSettings(host="127.0.0.1", port=broker.tls_port,
                        tls=TlsOptions(ca_file=pki.ca_cert))
    sink = MqttSink(settings=good, options=MqttSinkOptions(site="tls", **FAST))
    async with Listener(broker.port, ["harken/tls/caption/final"]) as listener, \
            running(sink) as bus:
        await bus.publish(final(1, text="over tls"))
        (got,) = await listener.expect("harken/tls/caption/final")
    assert got.json()["text"] == "over tls"
    assert sink.settings.address.startswith("mqtts://")

    untrusted = MqttSettings(host="127.0.0.1", port=broker.tls_port,
                             tls=TlsOptions(ca_file=pki.other_ca_cert))
    sink = MqttSink(settings=untrusted, options=MqttSinkOptions(site="tls2", **FAST))
    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.timeout(WAIT_S):
            await sink.consume(EventBus().subscribe("mqtt"))
    assert info.group_contains(MqttConfigError, match="--mqtt-ca")


async def test_tls_client_certificate(tmp_path: Path, pki: Pki) -> None:
    with Mosquitto(tmp_path, tls=pki, require_client_cert=True) as strict:
        assert strict.tls_port is not None
        settings = MqttSettings(host="localhost", port=strict.tls_port, tls=TlsOptions(
            ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key))
        sink = MqttSink(settings=settings, options=MqttSinkOptions(site="mtls", **FAST))
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        async with Listener(strict.tls_port, ["harken/mtls/caption/final"],
                            tls=context) as listener, running(sink) as bus:
            await bus.publish(final(1))
            await listener.expect("harken/mtls/caption/final")


# -------------------------------------------------------------------- passwords


async def test_a_refused_password_is_a_clear_error_that_never_shows_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    passwords = password_file(tmp_path, {"alice": "right-pw"})
    caplog.set_level(logging.DEBUG)
    with Mosquitto(tmp_path / "b", passwords=passwords) as secured:
        wrong = MqttSettings(host=secured.host, port=secured.port, username="alice",
                             password="wrong-pw-4711")
        sink = MqttSink(settings=wrong, options=MqttSinkOptions(site="pw", **FAST))
        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.timeout(WAIT_S):
                await sink.consume(EventBus().subscribe("mqtt"))
        assert info.group_contains(MqttConfigError, match="HARKEN_MQTT_PASSWORD")
        assert "wrong-pw-4711" not in str(info.value.exceptions[0])
        right = MqttSettings(host=secured.host, port=secured.port, username="alice",
                             password="right-pw")
        sink = MqttSink(settings=right, options=MqttSinkOptions(site="pw", **FAST))
        async with running(sink):
            assert sink.connected
    assert "wrong-pw-4711" not in caplog.text
    assert "right-pw" not in caplog.text


# ---------------------------------------------------------- outages and the outbox


async def test_broker_restart_mid_run_delivers_every_final_in_order(tmp_path: Path) -> None:
    """Finals before, during and after a broker outage all arrive, in order: at-least-once
    (a final whose PUBACK was lost in the outage may arrive twice; none is lost)."""
    with Mosquitto(tmp_path, persistence=True) as restarting:
        topic = "harken/restart/caption/final"
        listen: dict[str, Any] = {"client_id": "restart-listener", "persistent": True}
        sink = MqttSink(settings=plain(restarting), options=MqttSinkOptions(
            site="restart", **FAST))
        async with Listener(restarting.port, [topic], **listen) as before:
            # maxsize=2: if the sink ever blocked on the network, publish() would stall.
            async with running(sink, maxsize=2) as bus:
                for i in range(10):
                    await bus.publish(final(i))
                await before.expect(topic, 10)
                await before.close()  # its session (and subscription) stays on the broker
                restarting.stop()
                async with asyncio.timeout(WAIT_S):
                    await sink.wait_connected(False)
                for i in range(10, 20):
                    await bus.publish(final(i))  # during the outage: into the outbox
                assert not sink.connected
                restarting.start()
                async with asyncio.timeout(WAIT_S):
                    await sink.wait_connected()
                for i in range(20, 30):
                    await bus.publish(final(i))
            async with Listener(restarting.port, [topic], **listen) as after:
                await after.expect(topic, 20, where=lambda m: m.json()["segment"] >= 10)
    first = [m.json()["segment"] for m in before.on(topic)]
    second = [m.json()["segment"] for m in after.on(topic)]
    # Every final arrived, and first arrivals are in publication order...
    assert list(dict.fromkeys(first + second)) == list(range(30)), (first, second)
    # ...and what the sink sent after the outage (backlog, then live) came in order; a
    # repeat is the at-least-once retry of a message whose PUBACK the outage swallowed.
    resent = [s for s in second if s >= 10]
    assert [s for i, s in enumerate(resent) if i == 0 or s != resent[i - 1]] == \
        list(range(10, 30)), second
    assert sink.reconnects == 1
    assert (sink.outbox_dropped, sink.undelivered) == (0, 0)


async def test_full_outbox_drops_the_oldest_and_delivers_the_rest_in_order(
        tmp_path: Path) -> None:
    with Mosquitto(tmp_path, persistence=True) as later:
        topic = "harken/ob/caption/final"
        listen: dict[str, Any] = {"client_id": "ob-listener", "persistent": True}
        async with Listener(later.port, [topic], **listen):
            pass  # subscribe once: the broker now queues for this session
        later.stop()
        sink = MqttSink(settings=plain(later), options=MqttSinkOptions(
            site="ob", outbox_size=4, drain_timeout_s=WAIT_S, **FAST))
        bus = EventBus()
        sub = bus.subscribe(sink.name)
        async with asyncio.timeout(3 * WAIT_S), asyncio.TaskGroup() as tg:
            tg.create_task(sink.consume(sub))
            for i in range(10):
                await bus.publish(final(i))
            await bus.close()  # the sink now drains against its deadline...
            later.start()  # ...and the broker comes back within it
        async with Listener(later.port, [topic], **listen) as listener:
            got = await listener.expect(topic, 4)
    assert [m.json()["segment"] for m in got] == [6, 7, 8, 9]
    assert (sink.outbox_dropped, sink.undelivered) == (6, 0)


# ---------------------------------------------------------------- embedded broker


async def test_embedded_broker_serves_the_sink_and_subscribers() -> None:
    async with EmbeddedBroker(port=0) as embedded:  # 0: a free port
        assert embedded.running
        sink = MqttSink(settings=embedded.settings, options=MqttSinkOptions(site="emb", **FAST))
        async with Listener(embedded.port, ["harken/emb/#"], persistent=True,
                            client_id="emb-listener") as listener, running(sink) as bus:
            await bus.publish(final(1, text="one machine"))
            (got,) = await listener.expect("harken/emb/caption/final")
        assert got.json()["text"] == "one machine"
        async with Listener(embedded.port, ["harken/emb/status"], persistent=True,
                            client_id="emb-late") as late:
            (status,) = await late.expect("harken/emb/status")
            assert (status.payload, status.retain) == (b"offline", True)
    assert not embedded.running  # stopped with the run


@pytest.mark.parametrize("qos", [0, 1])
async def test_embedded_broker_delivers_every_control_command_from_short_lived_clients(
        qos: int) -> None:
    """What amqtt failed: `mosquitto_pub -t harken/x/set -m pause` from one-shot clients,
    while a watching subscriber keeps receiving."""
    target = Target()
    async with EmbeddedBroker(port=0) as embedded:
        sink = MqttSink(settings=embedded.settings,
                        options=MqttSinkOptions(site="cmd", **FAST), control=target)
        async with Listener(embedded.port, ["harken/cmd/state"]) as watcher, \
                running(sink):
            for i in range(10):
                async with Listener(embedded.port, []) as once:  # connect, publish, leave
                    command = b"pause" if i % 2 == 0 else b"resume"
                    await once.client.publish("harken/cmd/set", command, qos=qos)
                await watcher.expect("harken/cmd/state", i + 1,
                                     where=lambda m: m.json()["last_command"] is not None)
    assert sink.commands_applied == 10
    assert not target.paused


async def test_embedded_broker_on_a_busy_port_says_what_to_do(broker: Mosquitto) -> None:
    with pytest.raises(BrokerError, match="another broker") as err:
        async with EmbeddedBroker(port=broker.port):
            pass
    assert "\n" not in str(err.value)
    assert f"mqtt://127.0.0.1:{broker.port}" in str(err.value)


async def test_embedded_broker_restarts_on_its_port_keeping_queued_messages(
        tmp_path: Path) -> None:
    async with EmbeddedBroker(port=0, persistence_dir=tmp_path) as embedded:
        async with Listener(embedded.port, ["t/#"], persistent=True, client_id="keep"):
            pass  # subscribed, then away: QoS 1 messages wait for it
        async with Listener(embedded.port, []) as pub:
            await pub.client.publish("t/x", b"kept", qos=1)
        await embedded.restart()
        async with Listener(embedded.port, ["t/#"], persistent=True,
                            client_id="keep") as back:
            (got,) = await back.expect("t/x")
    assert (got.payload, embedded.restarts) == (b"kept", 1)


def test_embedded_on_a_busy_port_is_one_line_and_exit_2(broker: Mosquitto) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARKEN_")}
    env.update({"HF_HUB_OFFLINE": "1", "XDG_CONFIG_HOME": "/nonexistent",
                "HARKEN_MQTT__EMBEDDED_PORT": str(broker.port)})
    sample = Path(__file__).parent.parent / "assets" / "sample.wav"
    proc = subprocess.run([sys.executable, "-m", "harken.app.cli", "run", "--input",
                           str(sample), "--mqtt", "embedded", "--jsonl"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, no traceback
    assert "another broker" in proc.stderr


def test_embedded_setup_runs_the_broker_in_a_thread_around_the_session() -> None:
    port = free_port()
    setup = MqttSetup(HarkenConfig(mqtt=MqttConfig(url="embedded", embedded_port=port,
                                                   site="thr")))
    (sink,) = setup.sinks()
    assert (sink.settings.host, sink.settings.port) == ("127.0.0.1", port)

    async def session() -> bytes:
        async with Listener(port, ["harken/thr/caption/final"], persistent=True,
                            client_id="thr") as listener, running(sink) as bus:
            await bus.publish(final(1))
            (got,) = await listener.expect("harken/thr/caption/final")
            return got.payload

    with setup.broker():
        payload = asyncio.run(session())
    assert b'"final 1"' in payload


CTRL_C_CHILD = """
import asyncio, os, signal
from harken.engine.mqtt.broker import EmbeddedBroker

async def main():
    got = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, got.set)
    async with EmbeddedBroker(port=0) as embedded:
        os.killpg(0, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        await asyncio.wait_for(got.wait(), 5)
        await asyncio.sleep(0.5)  # time for mosquitto to exit, were it hit
        print("running" if embedded.running else "stopped", flush=True)

asyncio.run(main())
"""


async def test_ctrl_c_in_the_terminal_leaves_the_embedded_broker_to_the_session() -> None:
    """The first Ctrl-C still publishes the last finals: the broker must outlive it (it
    is stopped with the session), or the sink logs a false retry on the way out."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CTRL_C_CHILD, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)  # its own group to signal
    async with asyncio.timeout(WAIT_S * 3):
        out, err = await child.communicate()
    assert (out.decode().strip(), child.returncode) == ("running", 0), err.decode()


KILLED_CHILD = """
import sys, threading, time
from harken.app.mqtt import BrokerThread
from harken.engine.mqtt.broker import EmbeddedBroker

with BrokerThread(EmbeddedBroker(port=int(sys.argv[1]))):
    print("up", flush=True)
    time.sleep(60)
"""


async def test_the_embedded_broker_ends_when_harken_is_killed(tmp_path: Path) -> None:
    """In a process group of its own, the broker would outlive a Harken that is killed
    (SIGKILL, a closed terminal) and hold its port; the kernel ends it instead. Its private
    folder is left; the next embedded broker removes it."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_CHILD, str(port), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(WAIT_S * 3):
        assert child.stdout is not None
        assert (await child.stdout.readline()).strip() == b"up", await child.stderr.read()
        child.send_signal(signal.SIGKILL)
        await child.wait()
        while True:  # mosquitto gets SIGTERM from the kernel and lets the port go
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break
            await asyncio.sleep(0.1)
    # The killed Harken could not remove its private folder; the next broker to start does
    # (its owner is gone), and keeps its own.
    assert len(_broker_folders(child.pid)) == 1
    async with EmbeddedBroker(port=0):
        assert _broker_folders(child.pid) == []
        assert len(_broker_folders(os.getpid())) == 1


def _broker_folders(pid: int) -> list[str]:
    """The embedded brokers' private folders of process `pid`."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"harken-mosquitto-{pid}-*"))
