"""Runtime controls of a running session: the MQTT control topic switches the keywords and
the translation language (real mosquitto, real engine, real tiny caption and translation
models), and diarization goes off and on again (the TUI's `d`) with the real speakers stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mosquitto import MOSQUITTO, SKIP_REASON, WAIT_S, Listener, Mosquitto
from test_speakers_stage import HIGH, LOW, OPTIONS, BandEmbedder, BandSegmenter, FinalStage
from test_speakers_stage import script_audio as voices
from tiny_models import speechlike_audio
from tiny_task_models import build_tiny_translation_model

from harken.app.bench.architectures import SPEECH_COMMANDS_LABELS
from harken.app.config import HarkenConfig, KeywordsConfig, TranslationConfig
from harken.app.session import Session
from harken.app.tasks.loader import ModelLoader
from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionFinal, Event, SpeakerTurn
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.control import SetKeywords, SetTranslation, apply
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.sources.file import FileSource
from harken.engine.stages.base import Stage, StageContext
from harken.engine.stages.keywords import KeywordSelection
from harken.engine.stages.speakers import DiarizationSwitch, SpeakerStage
from harken.engine.vad import SegmentStart, VadOptions
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.errors import ControlError, KeywordError
from harken.models.translation import SpeechTranslator
from harken.models.triggers import KeywordTrigger, ScoredWindow, TriggerOptions

BLOCK = SAMPLE_RATE // 10
SITE = "home"
NOISE = 1e-3  # below the VAD

# The synthetic voices are harmonic buzz: speech to webrtcvad, not to silero-vad, so the
# speaker logic is driven through webrtcvad alone.
WEBRTC = VadOptions(engine="webrtc")


class HearsEverything:
    """A keyword classifier that scores every keyword of the Speech Commands labels at 0.9
    in every window: which keywords fire is then decided by the keyword list alone."""

    model_id = "hears-everything"
    labels = SPEECH_COMMANDS_LABELS
    batchable = True

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        probs = np.array([0.0 if label.startswith("_") else 0.9 for label in self.labels],
                         dtype=np.float32)
        return [probs.copy() for _ in windows]


class PushSource:
    """One stream whose audio the test hands over utterance by utterance; None ends it."""

    description = "pushed"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._seed = 0

    async def __aenter__(self) -> PushSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def say(self) -> None:
        """0.9 s of speech-like audio between near-silences: one VAD segment."""
        rng = np.random.default_rng(self._seed)
        self._seed += 1
        quiet = (NOISE * rng.standard_normal(round(1.2 * SAMPLE_RATE))).astype(np.float32)
        self.queue.put_nowait(np.concatenate([quiet[:SAMPLE_RATE // 2],
                                              speechlike_audio(0.9, seed=self._seed), quiet]))

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        pos = 0
        while (audio := await self.queue.get()) is not None:
            for s in range(0, len(audio), BLOCK):
                yield AudioBlock(stream="room", start=pos + s, samples=audio[s:s + BLOCK])
            pos += len(audio)


@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_mqtt_commands_switch_keywords_and_translation_of_a_running_session(
        tmp_path: Path, tiny_ctc_dirs: dict[str, Path]) -> None:
    captioner = CtcCaptioner.from_pretrained(str(tiny_ctc_dirs["hubert"]), device="cpu")
    translator = SpeechTranslator.from_pretrained(
        str(build_tiny_translation_model(tmp_path / "s2t")), device="cpu")
    config = HarkenConfig(keywords=KeywordsConfig(enabled=True, words=["yes"]),
                          translation=TranslationConfig(languages=["de"], max_new_tokens=4))
    source = PushSource()
    with Mosquitto(tmp_path / "broker") as broker:
        sink = MqttSink(settings=MqttSettings(host=broker.host, port=broker.port),
                        options=MqttSinkOptions(site=SITE, backoff_initial_s=0.05,
                                                backoff_max_s=0.2))
        session = Session(config=config, sources=[source], sinks=[sink], live=False,
                                  models=ModelLoader(captioner=captioner,
                                                     spotter=HearsEverything(),  # type: ignore[arg-type]
                                                     translator=translator))
        base = f"harken/{SITE}"

        async def command(payload: bytes, request_id: str) -> None:
            await listener.client.publish(f"{base}/set", payload, qos=1)
            await listener.expect(f"{base}/state", where=lambda m: (
                m.json()["last_command"] or {}).get("id") == request_id)

        async with asyncio.timeout(6 * WAIT_S), Listener(broker.port, [f"{base}/#"]) as listener, \
                asyncio.TaskGroup() as tg:
            run = tg.create_task(session.run())
            await listener.expect(f"{base}/state")  # bound and connected
            source.say()
            await listener.expect(f"{base}/keyword/yes")
            await listener.expect(f"{base}/translation/de")

            await command(b'{"command": "keywords", "keywords": ["No", "up"], "id": "k"}', "k")
            await command(b'{"command": "translation", "language": "fr", "id": "t"}', "t")
            for bad in (b'{"command": "keywords", "keywords": ["_silence_"], "id": "b1"}',
                        b'{"command": "keywords", "keywords": ["banana"], "id": "b2"}',
                        b'{"command": "translation", "language": "xx", "id": "b3"}'):
                await listener.client.publish(f"{base}/set", bad, qos=1)
            errors = [m.json() for m in await listener.expect(f"{base}/error", 3)]
            assert [(e["code"], e["id"], e["command"]) for e in errors] == [
                ("invalid_argument", "b1", "keywords"), ("invalid_argument", "b2", "keywords"),
                ("invalid_argument", "b3", "translation")]
            assert "background" in errors[0]["message"]
            for e in errors[:2]:  # the valid keywords are listed
                assert "yes, no, up, down" in e["message"]
            assert "banana" in errors[1]["message"]
            assert "xx" in errors[2]["message"]
            assert "de, " in errors[2]["message"]
            assert "fr" in errors[2]["message"]

            source.say()  # the rejected commands left the switched lists in place
            await listener.expect(f"{base}/keyword/no")
            await listener.expect(f"{base}/keyword/up")
            (fr,) = await listener.expect(f"{base}/translation/fr")
            assert fr.json()["lang"] == "fr"
            assert fr.json()["segment"] == 1

            await command(b'{"command": "translation", "language": null, "id": "off"}', "off")
            source.say()
            await listener.expect(f"{base}/keyword/no", 2)
            await listener.expect(f"{base}/caption/final", 3)
            source.queue.put_nowait(None)
            await run
            await listener.expect(f"{base}/status", where=lambda m: m.payload == b"offline")

    def segments(topic: str) -> list[int]:
        return [m.json()["segment"] for m in listener.on(f"{base}/{topic}")]

    assert segments("caption/final") == [0, 1, 2]  # the engine was never disturbed
    assert segments("keyword/yes") == [0]
    assert segments("keyword/no") == segments("keyword/up") == [1, 2]
    assert segments("translation/de") == [0]
    assert segments("translation/fr") == [1]  # none after `null`
    assert (sink.commands_applied, sink.commands_rejected) == (3, 3)
    with pytest.raises(ControlError, match="keyword spotting is not running") as info:
        apply(SetKeywords(keywords=("yes",), id="late"), session)  # the session has ended
    assert (info.value.code, info.value.request_id) == ("unsupported", "late")


def test_a_session_without_the_tasks_answers_unsupported() -> None:
    session = Session(config=HarkenConfig(), sources=[], sinks=[], live=False)
    with pytest.raises(ControlError, match="keyword task enabled") as info:
        apply(SetKeywords(keywords=("yes",), id="1"), session)
    assert (info.value.code, info.value.command, info.value.request_id) == (
        "unsupported", "keywords", "1")
    with pytest.raises(ControlError, match="translation task enabled") as info:
        apply(SetTranslation(language="de"), session)
    assert info.value.code == "unsupported"
    with pytest.raises(ControlError, match="--diarize"):
        session.set_diarization(False)
    with pytest.raises(ControlError, match="no engine"):
        session.pause()


def test_keyword_selection_takes_only_spottable_labels() -> None:
    selection = KeywordSelection(labels=SPEECH_COMMANDS_LABELS, keywords=["yes"],
                                 model_id="kws")
    assert selection.set([" NO", "up", "no"]) == ("no", "up") == selection.keywords
    for bad, why in ((["_unknown_"], "background"), (["yes", "maybe"], "cannot spot"),
                     ([], "empty")):
        with pytest.raises(KeywordError, match=why):
            selection.set(bad)
    assert selection.keywords == ("no", "up")  # a rejected list changed nothing


def test_a_trigger_keeps_the_state_of_the_keywords_it_keeps() -> None:
    hop = SAMPLE_RATE // 5
    trigger = KeywordTrigger(keywords=["yes"], options=TriggerOptions(patience=1), hop=hop)

    def window(i: int) -> ScoredWindow:
        return ScoredWindow(start=i * hop, end=i * hop + SAMPLE_RATE,
                            scores={"yes": 0.9, "no": 0.9})

    assert [h.keyword for h in trigger.feed(window(0))] == ["yes"]
    trigger.set_keywords(["yes", "no"])
    # The word that already fired as "yes" is still being heard: it does not fire again.
    assert [h.keyword for h in trigger.feed(window(1))] == ["no"]


# ------------------------------------------------------------------- diarization switch


class SwitchAt(FinalStage):
    """FinalStage that also flips the session's diarization switch as segments start."""

    def __init__(self, stream: str, switch: DiarizationSwitch, plan: dict[int, bool]) -> None:
        super().__init__(stream)
        self.switch = switch
        self.plan = plan

    def on_start(self, start: SegmentStart) -> None:
        super().on_start(start)
        if start.segment in self.plan:
            self.switch.set(self.plan[start.segment])


async def diarize(path: Path, plan: dict[int, bool]) -> tuple[list[Event], SpeakerStage]:
    switch = DiarizationSwitch()
    stages: list[SpeakerStage] = []

    def speakers(ctx: StageContext) -> Stage:
        stages.append(SpeakerStage(stream=ctx.stream, segmenter=BandSegmenter(),
                                   embedder=BandEmbedder(), worker=ctx.worker, options=OPTIONS,
                                   live=ctx.live, arrivals=ctx.arrivals, switch=switch))
        return stages[-1]

    events: list[Event] = []
    async with InferenceWorker(name="test") as worker:
        engine = Engine(sources=[FileSource(path=path, stream_id="talk")], worker=worker,
                        stages=[lambda ctx: SwitchAt(ctx.stream, switch, plan), speakers],
                        options=EngineOptions(live=False, levels=False, vad=WEBRTC))
        sub = engine.subscribe("test", maxsize=10_000)

        async def collect() -> None:
            async for event in sub:
                events.append(event)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(collect())
            await engine.run()
    return events, stages[0]


def test_diarization_off_stops_labelling_and_on_again_keeps_known_speakers(
        tmp_path: Path) -> None:
    script = [(None, 0.5), (LOW, 2.5), (None, 1.5), (HIGH, 2.5), (None, 1.5), (LOW, 2.0),
              (None, 1.0)]
    path = tmp_path / "talk.wav"
    sf.write(str(path), voices(script), SAMPLE_RATE)

    events, _ = asyncio.run(diarize(path, {}))
    assert [e.speaker for e in events if isinstance(e, CaptionFinal)] == ["S1", "S2", "S1"]

    events, stage = asyncio.run(diarize(path, {1: False, 2: True}))
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert [f.speaker for f in finals] == ["S1", None, "S1"]
    # Off, the high voice was never analysed: no turn during it, and no second speaker.
    turns = [e for e in events if isinstance(e, SpeakerTurn)]
    assert turns
    assert {t.speaker for t in turns} == {"S1"}
    assert not any(t.end > finals[1].start and t.start < finals[1].end for t in turns)
    assert stage.clustering.anonymous_speakers == 1
    # The turn heard before the switch-off was released, not lost.
    assert any(t.start < finals[0].end and t.end > finals[0].start for t in turns)
