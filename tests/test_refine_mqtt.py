"""Refinement over MQTT: with refinement on, each caption final settles once (its accepted
refinement, else the CTC text after at most refine.max_wait_s, counted) on
`caption/settled`, which Hermes textCaptured and the Home Assistant caption sensor read;
`caption/final` still goes out at once, before its annotations. End to end with a tiny
random Whisper through the real loading path and a real mosquitto."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mosquitto import MOSQUITTO, SKIP_REASON, Listener, Mosquitto
from tiny_models import build_tiny_ctc, speechlike_audio
from tiny_refine_models import build_tiny_whisper

from harken.app import session as factory
from harken.app.config import HarkenConfig, MqttConfig, RefineConfig
from harken.app.mqtt import MqttSetup
from harken.app.tasks.loader import ModelLoader
from harken.engine.events import CaptionFinal, CaptionRefined, Event, Word
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.sink import MAX_SETTLING, MqttSink, MqttSinkOptions
from harken.engine.mqtt.topics import HERMES_TEXT_CAPTURED, SiteTopics, ha_discovery
from harken.engine.sources.file import FileSource
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.refine import SpeechRefiner

SETTLED = "harken/den/caption/settled"


def sink(*, wait: float | None = 0.2, refined: bool = True, hermes: bool = True) -> MqttSink:
    return MqttSink(settings=MqttSettings(host="127.0.0.1", port=1),
                    options=MqttSinkOptions(site="den", hermes=hermes, refined=refined,
                                            refine_wait_s=wait))


def final(i: int, text: str = "TURN IT ON") -> CaptionFinal:
    return CaptionFinal(stream="mic", start=float(i), end=i + 1.0, segment=i, text=text,
                        words=(Word(word=text.split()[0], start=i, end=i + 0.3),),
                        speaker="S1")


def refined(i: int, *, text: str = "Turn it on.", accepted: bool = True,
            reason: str = "ok") -> CaptionRefined:
    return CaptionRefined(stream="mic", start=float(i), end=i + 1.0, segment=i, text=text,
                          words=(Word(word="Turn", start=i, end=i + 0.3),), model="whisper",
                          accepted=accepted, reason=reason)


def sent(s: MqttSink) -> list[tuple[str, dict[str, object]]]:
    return [(m.topic, json.loads(m.payload)) for m in s._outbox]


def topics_of(s: MqttSink) -> list[str]:
    return [t for t, _ in sent(s)]


async def test_a_final_settles_with_its_refinement_after_the_final_went_out() -> None:
    s = sink()
    s._route(final(0))
    assert topics_of(s) == ["harken/den/caption/final"]  # nothing else waits on the final
    s._route(refined(0))
    assert topics_of(s) == ["harken/den/caption/final", "harken/den/caption/refined",
                            SETTLED, HERMES_TEXT_CAPTURED]
    settled, captured = sent(s)[2][1], sent(s)[3][1]
    assert (settled["type"], settled["text"], settled["refined"]) == \
        ("caption_settled", "Turn it on.", True)
    assert (settled["speaker"], settled["segment"], settled["refine_reason"]) == ("S1", 0, "ok")
    assert captured["text"] == "Turn it on."
    assert [t["value"] for t in captured["asrTokens"][0]] == ["Turn"]
    assert (s.settled_refined, s.settled_fallbacks) == (1, 0)
    assert s.counters()["settled_refined"] == 1


async def test_a_rejected_refinement_settles_with_the_ctc_text_counted() -> None:
    s = sink()
    s._route(final(1))
    s._route(refined(1, text="TURN IT ON", accepted=False, reason="disagrees"))
    (settled,) = [d for t, d in sent(s) if t == SETTLED]
    assert (settled["text"], settled["refined"], settled["refine_reason"]) == \
        ("TURN IT ON", False, "disagrees")
    (captured,) = [d for t, d in sent(s) if t == HERMES_TEXT_CAPTURED]
    assert captured["text"] == "TURN IT ON"
    assert (s.settled_refined, s.settled_fallbacks) == (0, 1)


async def test_a_late_refinement_leaves_the_ctc_text_and_is_not_sent_twice() -> None:
    s = sink(wait=0.1)
    s._route(final(2))
    await asyncio.sleep(0.05)
    assert SETTLED not in topics_of(s)  # still waiting
    await asyncio.sleep(0.15)
    (settled,) = [d for t, d in sent(s) if t == SETTLED]
    assert (settled["text"], settled["refine_reason"]) == ("TURN IT ON", "late")
    s._route(refined(2))  # too late: only its own topic
    assert topics_of(s).count(SETTLED) == 1
    assert topics_of(s).count(HERMES_TEXT_CAPTURED) == 1
    assert topics_of(s)[-1] == "harken/den/caption/refined"
    assert s.settled_fallbacks == 1


async def test_without_a_bound_finals_wait_for_their_refinement_in_any_order() -> None:
    s = sink(wait=None)
    for i in range(3):
        s._route(final(i))
    await asyncio.sleep(0.05)
    assert SETTLED not in topics_of(s)
    for i in (1, 0, 2):
        s._route(refined(i, text=f"Caption {i}."))
    texts = [d["text"] for t, d in sent(s) if t == HERMES_TEXT_CAPTURED]
    assert texts == ["Caption 1.", "Caption 0.", "Caption 2."]


async def test_waiting_finals_are_bounded_and_settle_at_the_end() -> None:
    s = sink(wait=None)
    for i in range(MAX_SETTLING + 5):
        s._route(final(i))
    assert s.settled_fallbacks == 5  # the oldest ones kept their CTC text
    assert [d["segment"] for t, d in sent(s) if t == SETTLED] == list(range(5))

    async def no_events():  # type: ignore[no-untyped-def]
        return
        yield

    s.options = MqttSinkOptions(site="den", hermes=True, refined=True, refine_wait_s=None,
                                drain_timeout_s=0.0, backoff_initial_s=0.01)
    await asyncio.wait_for(s.consume(no_events()), 5)  # no broker: it gives up at once
    assert s.settled_fallbacks == MAX_SETTLING + 5  # the run ended: every final settled


async def test_without_refinement_hermes_takes_the_final_at_once() -> None:
    s = sink(refined=False)
    s._route(final(0))
    assert topics_of(s) == ["harken/den/caption/final", HERMES_TEXT_CAPTURED]
    s._route(refined(0))
    assert SETTLED not in topics_of(s)


def test_the_caption_sensor_reads_the_settled_topic_when_refining() -> None:
    topics = SiteTopics(prefix="harken", site="den")
    for refining, topic in ((False, "harken/den/caption/final"), (True, SETTLED)):
        (sensor,) = [d.config for d in ha_discovery(topics, availability="harken/den/status",
                                                    refined=refining)
                     if d.topic.endswith("/last_caption/config")]
        assert sensor["state_topic"] == sensor["json_attributes_topic"] == topic
        assert sensor["unique_id"] == "harken_den_last_caption"  # the same entity either way
        assert ("value_json.refined" in sensor["json_attributes_template"]) is refining


def test_the_setup_waits_live_and_not_for_files() -> None:
    config = HarkenConfig(mqtt=MqttConfig(url="mqtt://localhost"),
                          refine=RefineConfig(model="x", max_wait_s=1.5))
    live = MqttSetup(config).sink_options
    assert (live.refined, live.refine_wait_s) == (True, 1.5)
    assert MqttSetup(config, live=False).sink_options.refine_wait_s is None
    assert not MqttSetup(HarkenConfig(mqtt=MqttConfig(url="mqtt://localhost"))
                         ).sink_options.refined


# ----------------------------------------------------------------- end to end


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_hermes_and_the_sensor_carry_the_refined_text_end_to_end(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    parts = []
    for i in range(3):
        parts.append((1e-3 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))
        parts.append(speechlike_audio(0.9, seed=30 + i))
    parts.append((1e-3 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))
    path = tmp_path / "talk.wav"
    sf.write(str(path), np.concatenate(parts), SAMPLE_RATE, subtype="FLOAT")
    captioner = CtcCaptioner.from_pretrained(str(build_tiny_ctc("hubert", tmp_path / "ctc")),
                                             device="cpu")
    folder = build_tiny_whisper(tmp_path / "whisper")
    refiner = SpeechRefiner.from_pretrained(str(folder), device="cpu")
    with Mosquitto(tmp_path / "broker") as broker:
        config = HarkenConfig(
            refine=RefineConfig(model=str(folder), guard=False, max_new_tokens=4),
            mqtt=MqttConfig(url=f"mqtt://127.0.0.1:{broker.port}", site="den", hermes=True,
                            ha_discovery=True))
        setup = MqttSetup(config, live=False)
        collected: list[Event] = []

        class Collect:
            name = "collect"

            async def consume(self, events):  # type: ignore[no-untyped-def]
                async for event in events:
                    collected.append(event)

        async with Listener(broker.port, ["harken/den/#", "hermes/#", "homeassistant/#"]) \
                as listener:
            session = factory.Session(
                config=config, sinks=[*setup.sinks(), Collect()], live=False,
                sources=[FileSource(path=path, stream_id="talk", realtime=False)],
                models=ModelLoader(captioner=captioner, refiner=refiner))
            await asyncio.wait_for(session.run(), 120)
            await listener.expect("harken/den/status", where=lambda m: m.payload == b"offline")
    refinements = [e for e in collected if isinstance(e, CaptionRefined)]
    finals = [e for e in collected if isinstance(e, CaptionFinal)]
    assert len(refinements) == len(finals) >= 2
    settled = [m.json() for m in listener.on(SETTLED)]
    assert [m["segment"] for m in settled] == [f.segment for f in finals]
    assert [m["text"] for m in settled] == [r.text for r in refinements]
    assert all(m["refined"] for m in settled if m["text"].strip())
    spoken = [r.text.strip() for r in refinements if r.text.strip()]
    assert spoken, "the tiny Whisper should say something"
    assert [m.json()["text"] for m in listener.on(HERMES_TEXT_CAPTURED)] == spoken
    # Every final reached the broker before its refinement and its settled caption.
    order = [(m.topic.rsplit("/", 1)[-1], m.json().get("segment")) for m in
             listener.on("harken/den/caption/#")]
    for f in finals:
        at = order.index(("final", f.segment))
        assert at < order.index(("refined", f.segment))
        assert at < order.index(("settled", f.segment))
    (sensor,) = [m.json() for m in listener.on("homeassistant/sensor/+/last_caption/config")]
    assert sensor["state_topic"] == SETTLED
