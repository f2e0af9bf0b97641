"""Satellite audio end to end: Hermes audioFrame WAV chunks from two sites at once, through a
real mosquitto, the real engine (VAD, per-stream state) and the MQTT sink, with results on
each site's own topics. The caption model is a fake stage (one final per VAD segment), so
the test checks the plumbing, not recognition."""

from __future__ import annotations

import asyncio
import io
import random
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soxr
from audio_gen import HAVE_ESPEAK, espeak, silence, trim
from mosquitto import MOSQUITTO, SKIP_REASON, WAIT_S, Listener, Mosquitto

from harken.engine.events import CaptionFinal, Event, Stats
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.stages.base import Stage, StageContext
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON),
    pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is needed to make test speech"),
]

FRAME = 1024  # samples per Hermes audio frame, as Rhasspy sends them
LEAD_S = 0.6  # silence before the speech, so the stream clock of each site is checkable


class SegmentStage:
    """A caption stage without a model: one CaptionFinal per VAD segment."""

    name = "fake-captions"

    def __init__(self, ctx: StageContext) -> None:
        self.stream = ctx.stream
        self.starts: dict[int, int] = {}
        self.samples = 0

    def on_start(self, start: SegmentStart) -> None:
        self.starts[start.segment] = start.start

    def on_audio(self, audio: SegmentAudio) -> None:
        self.samples += int(audio.samples.size)

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        start = self.starts.pop(end.segment) / SAMPLE_RATE
        return [CaptionFinal(stream=self.stream, start=start, end=end.end / SAMPLE_RATE,
                             segment=end.segment, text=f"{self.stream} said something")]

    def counters(self) -> dict[str, int]:
        return {"fake_samples": self.samples}

    def latencies(self) -> dict[str, float | None]:
        return {}

    def background(self) -> AsyncIterator[Event] | None:
        return None


def segment_stage(ctx: StageContext) -> Stage:
    return SegmentStage(ctx)


def frames(audio: np.ndarray, rate: int) -> list[bytes]:
    """Hermes audioFrame payloads: 16-bit mono WAV chunks of FRAME samples."""
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")
    out = []
    for i in range(0, pcm.size, FRAME):
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm[i:i + FRAME].tobytes())
        out.append(buf.getvalue())
    return out


async def test_two_satellite_sites_at_once(tmp_path: Path) -> None:
    speech = trim(espeak("turn on the kitchen lights please", tmp_path))
    utterance = np.concatenate([silence(LEAD_S), speech, silence(1.2)])
    speech_s = speech.size / SAMPLE_RATE
    kitchen = frames(utterance, 16_000)
    # The bedroom satellite records at 22.05 kHz: its stream is resampled on arrival.
    bedroom = frames(soxr.resample(utterance, 16_000, 22_050).astype(np.float32), 22_050)
    truncated = kitchen[1][: len(kitchen[1]) // 2]
    with Mosquitto(tmp_path / "broker") as broker:
        settings = MqttSettings(host=broker.host, port=broker.port)
        ready: list[int] = []  # the command line's "listening" line comes from here
        source = SatelliteSource(settings=settings, client_id="harken-hub-audio",
                                 # fed unpaced, faster than real time: no audio-rate limit
                                 limits=SiteLimits(max_audio_ratio=1e6),
                                 backoff_initial_s=0.05, backoff_max_s=0.2,
                                 on_subscribed=lambda: ready.append(source.connects))
        sink = MqttSink(settings=settings, options=MqttSinkOptions(
            site="hub", sites_from_streams=True, hermes=True, backoff_initial_s=0.05,
            backoff_max_s=0.2))
        async with InferenceWorker(name="cpu") as worker:
            engine = Engine(sources=[source], stages=[segment_stage], worker=worker,
                            options=EngineOptions(live=False))
            sink.bind(engine)
            seen: list[Event] = []

            async def collect() -> None:
                async for event in events:
                    seen.append(event)

            events = engine.subscribe("collect")
            results = ["harken/+/caption/final", "hermes/asr/textCaptured", "harken/hub/#"]
            async with asyncio.timeout(4 * WAIT_S), \
                    Listener(broker.port, results) as listener, asyncio.TaskGroup() as tg:
                tg.create_task(sink.consume(engine.subscribe(sink.name)))
                tg.create_task(collect())
                run = tg.create_task(engine.run())
                await source.wait_connected()
                assert ready == [1]
                await sink.wait_connected()
                send = listener.client.publish
                await send("hermes/audioServer/bedroom/audioFrame", b"not a wav", qos=1)
                for i in range(max(len(kitchen), len(bedroom))):  # interleaved, as live
                    if i < len(kitchen):
                        await send("hermes/audioServer/kitchen/audioFrame", kitchen[i], qos=1)
                    if i < len(bedroom):
                        await send("hermes/audioServer/bedroom/audioFrame", bedroom[i], qos=1)
                await send("hermes/audioServer/kitchen/audioFrame", truncated, qos=1)
                finals = await listener.expect("harken/+/caption/final", 2)
                captured = await listener.expect("hermes/asr/textCaptured", 2)
                # The control topic acts on this engine.
                await send("harken/hub/set", b'{"command": "pause"}', qos=1)
                await listener.expect("harken/hub/state", where=lambda m: m.json()["paused"])
                assert engine.paused
                source.stop()
                await run
    by_site = {m.topic.split("/")[1]: m.json() for m in finals}
    assert set(by_site) == {"kitchen", "bedroom"}
    for site, final in by_site.items():
        assert (final["stream"], final["site"]) == (site, site)
        assert final["text"] == f"{site} said something"
        # Each site has its own clock: the segment starts near the speech onset.
        assert LEAD_S - 0.45 <= final["start"] <= LEAD_S + 0.1, final
        assert final["end"] - final["start"] >= speech_s - 0.1
    assert sorted(m.json()["siteId"] for m in captured) == ["bedroom", "kitchen"]
    assert source.malformed_frames == 2
    assert ready == [1]  # once
    # Both sites, in whichever order their first frames were decoded (not guaranteed).
    assert sorted(source.sites) == ["bedroom", "kitchen"]
    stats = [e for e in seen if isinstance(e, Stats)]
    assert {s.stream for s in stats} == {"kitchen", "bedroom"}
    assert all(s.counters["malformed_frames"] == 2 for s in stats[-2:])


async def test_a_hostile_client_cannot_stop_a_good_satellite(tmp_path: Path) -> None:
    """One good satellite streams three utterances while a hostile client sends mutated
    frames, deeply nested control JSON, `homeassistant/status online` and frames under
    2,000 made-up site names: every final of the good satellite arrives, the run goes on."""
    speech = trim(espeak("turn on the kitchen lights please", tmp_path))
    utterance = np.concatenate([silence(LEAD_S), speech, silence(1.2)])
    good = frames(np.concatenate([utterance] * 3), 16_000)
    quiet = frames(silence(0.064), 16_000)[0]
    rng = random.Random(7)

    def hostile_frame() -> bytes:
        out = bytearray(good[rng.randrange(len(good))])
        for _ in range(rng.randint(1, 6)):
            out[rng.randrange(44)] = rng.randrange(256)
        return bytes(out[: rng.randrange(8, len(out))])

    with Mosquitto(tmp_path / "broker") as broker:
        settings = MqttSettings(host=broker.host, port=broker.port)
        source = SatelliteSource(settings=settings, client_id="harken-hub-audio",
                                 # The good satellite is fed unpaced, far faster than
                                 # real time: lift the audio-rate limit for it.
                                 limits=SiteLimits(max_sites=4, max_audio_ratio=1e6),
                                 backoff_initial_s=0.05, backoff_max_s=0.2)
        sink = MqttSink(settings=settings, options=MqttSinkOptions(
            site="hub", sites_from_streams=True, ha_discovery=True, backoff_initial_s=0.05,
            backoff_max_s=0.2))
        async with InferenceWorker(name="cpu") as worker:
            engine = Engine(sources=[source], stages=[segment_stage], worker=worker,
                            options=EngineOptions(live=False))
            sink.bind(engine)
            produced: list[CaptionFinal] = []

            async def collect() -> None:
                async for event in events:
                    if isinstance(event, CaptionFinal):
                        produced.append(event)

            events = engine.subscribe("collect")
            async with asyncio.timeout(6 * WAIT_S), \
                    Listener(broker.port, ["harken/kitchen/caption/final"]) as listener, \
                    Listener(broker.port, []) as attacker, asyncio.TaskGroup() as tg:
                tg.create_task(sink.consume(engine.subscribe(sink.name)))
                tg.create_task(collect())
                run = tg.create_task(engine.run())
                await source.wait_connected()
                await sink.wait_connected()
                evil = attacker.client.publish
                flood = 0
                for i, frame in enumerate(good):
                    await listener.client.publish("hermes/audioServer/kitchen/audioFrame",
                                                  frame, qos=1)
                    await evil("hermes/audioServer/kitchen/audioFrame", b"RIFF" + frame[8:40])
                    await evil(f"hermes/audioServer/evil{i % 3}/audioFrame", hostile_frame())
                    await evil("harken/hub/set", rng.choice(
                        [b"[" * 4000, b'{"a":' * 800, b"\xff\xfe", b'{"command": 1e999}']))
                    await evil("homeassistant/status", b"online")
                    for _ in range(10):
                        flood += 1
                        await evil(f"hermes/audioServer/flood{flood}/audioFrame", quiet)
                total = len(good) * FRAME

                def behind() -> bool:  # the kitchen's clock counts its samples received
                    site = source._sites.get("kitchen")
                    return site is None or site.dsp is None or \
                        site.dsp.blocker.position < total - FRAME

                async with asyncio.timeout(WAIT_S):
                    while behind():  # noqa: ASYNC110 (waits for the broker's delivery)
                        await asyncio.sleep(0.05)
                source.stop()
                await run
                expected = {(f.start, f.end) for f in produced if f.stream == "kitchen"}
                got = await listener.expect("harken/kitchen/caption/final", len(expected))
    assert len(expected) >= 3  # three utterances, each at least one segment
    assert {(m.json()["start"], m.json()["end"]) for m in got} == expected
    assert run.exception() is None
    rejected = source.rejections.by_reason
    assert rejected["malformed"] > len(good) // 2
    assert rejected["too_many_sites"] > 1000
    assert rejected.get("error", 0) == 0
    assert len(source.sites) <= 4
    assert sink.rejections.total > len(good) // 2
    assert sink.rejections.by_reason.get("error", 0) == 0
