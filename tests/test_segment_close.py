"""How the engine closes a segment: live steps beside the VAD, final latency as published,
a caption final that goes out once its speaker is decided, a step superseded by on_end."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from test_pipeline import ListSource, SegmentEcho, labelled, run_engine, sample
from test_speakers_stage import OPTIONS, BandEmbedder, BandSegmenter
from tiny_speaker_models import voice

from harken.engine.events import CaptionFinal, Event, Stats
from harken.engine.metrics import ArrivalLog
from harken.engine.pipeline import Engine, StageContext
from harken.engine.stages.speakers import DiarizationSwitch, SpeakerStage
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions
from harken.engine.worker import PRIORITY_CAPTIONS, InferenceWorker

LOW = 120.0  # Hz: the band models' low voice


async def run(stages: list[object], *, live: bool, vad: VadOptions | None = None,
              engine_ref: list[Engine] | None = None) -> tuple[Engine, list[Event]]:
    engines = engine_ref if engine_ref is not None else []
    events = await asyncio.wait_for(
        run_engine(ListSource({"a": sample()}), stages=stages, live=live, vad=vad,
                   engine_ref=engines), timeout=60)
    return engines[-1], events


class SlowStep(SegmentEcho):
    """Counts the audio that reaches it while one of its steps is in flight."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.stepping = False
        self.audio_during_steps = 0

    def on_audio(self, audio: SegmentAudio) -> None:
        super().on_audio(audio)
        self.audio_during_steps += self.stepping

    async def step(self) -> list[Event]:
        self.stepping = True
        await asyncio.sleep(0.01)
        self.stepping = False
        return []


@pytest.mark.parametrize("live", [True, False])
async def test_live_steps_run_beside_the_vad_and_files_step_in_line(live: bool) -> None:
    made: list[SlowStep] = []

    def factory(ctx: StageContext) -> SlowStep:
        made.append(SlowStep(ctx))
        return made[-1]

    _, events = await run([factory], live=live)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    # Every sample of every segment reached the stage either way.
    assert finals
    assert all(int(f.text) > 0 for f in finals)
    assert (made[0].audio_during_steps > 0) is live


async def test_final_latency_is_taken_when_the_final_is_published() -> None:
    """Published finals are timed by the engine, those after a VAD split apart."""
    vad = VadOptions(max_segment_s=1.5, split_search_s=0.5)
    engine, events = await run([SegmentEcho], live=True, vad=vad)
    state = engine.streams["a"]
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    split = len(state.split_final_latency)
    assert split > 0
    assert len(state.final_latency) > 0
    assert split + len(state.final_latency) == len(finals)
    assert all(v >= 0 for v in state.final_latency.values())


class Annotating(SegmentEcho):
    """An annotator whose on_end takes a while; says the label is settled or not."""

    name = "annotating"

    def __init__(self, ctx: StageContext, *, settled: bool, engine: list[Engine]) -> None:
        super().__init__(ctx)
        self._settled = settled
        self._engine = engine
        self.published_before_my_end: list[bool] = []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await asyncio.sleep(0.02)  # the last analysis
        state = self._engine[0].streams["a"]
        published = len(state.final_latency) + len(state.split_final_latency)
        self.published_before_my_end.append(published > end.segment)
        return []

    def annotate(self, event: Event) -> Event:
        return labelled(event, "S1")

    def settled(self, event: Event) -> bool:
        return self._settled


@pytest.mark.parametrize("settled", [True, False])
async def test_a_settled_final_does_not_wait_for_the_annotators_end(settled: bool) -> None:
    engines: list[Engine] = []
    made: list[Annotating] = []

    def annotating(ctx: StageContext) -> Annotating:
        made.append(Annotating(ctx, settled=settled, engine=engines))
        return made[-1]

    _, events = await run([SegmentEcho, annotating], live=True, engine_ref=engines)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert finals
    assert all(f.speaker == "S1" for f in finals)
    assert made[0].published_before_my_end == [settled] * len(finals)


class Superseded(SegmentEcho):
    """A step far slower than the audio; its on_end does the work instead."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.cancelled = 0

    async def step(self) -> list[Event]:
        try:
            await asyncio.sleep(2.0)  # the whole file is read meanwhile
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return []

    def end_supersedes_step(self) -> bool:
        return True


async def test_a_segment_end_cancels_a_step_its_on_end_supersedes() -> None:
    made: list[Superseded] = []

    def factory(ctx: StageContext) -> Superseded:
        made.append(Superseded(ctx))
        return made[-1]

    _engine, events = await run([factory], live=True)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert len(finals) > 1
    stats = [e for e in events if isinstance(e, Stats)][-1]
    # Each end cancelled the step in flight instead of waiting for it.
    assert stats.counters["superseded_steps"] == made[0].cancelled == len(finals)


class Blocker:
    """A model whose forward pass waits for the test, holding the worker's thread."""

    model_id = "blocker"
    batchable = True

    def __init__(self) -> None:
        self.release = threading.Event()

    def encode(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        self.release.wait(timeout=10)
        return [np.zeros(1, np.float32) for _ in windows]


async def _speaker_run(*, cancel_first_step: bool) -> SpeakerStage:
    async with InferenceWorker(name="test") as worker:
        stage = SpeakerStage(stream="mic", segmenter=BandSegmenter(), embedder=BandEmbedder(),
                             worker=worker, options=OPTIONS, live=True, arrivals=ArrivalLog())
        audio = voice(4.0, pitch_hz=LOW)
        stage.on_start(SegmentStart(0, 0))
        stage.on_audio(SegmentAudio(0, 0, audio))
        if cancel_first_step:
            blocker = Blocker()
            held = asyncio.ensure_future(worker.encode(blocker, audio[:10],
                                                       priority=PRIORITY_CAPTIONS))
            await asyncio.sleep(0.05)  # the blocker runs; the step's passes queue behind it
            step = asyncio.ensure_future(stage.step())
            await asyncio.sleep(0.05)
            assert stage.end_supersedes_step()
            step.cancel()
            await asyncio.wait([step])
            blocker.release.set()
            await held
        await stage.on_end(SegmentEnd(0, len(audio), False))
        return stage


async def test_a_cancelled_speaker_step_leaves_the_stage_as_it_was() -> None:
    cancelled = await _speaker_run(cancel_first_step=True)
    fresh = await _speaker_run(cancel_first_step=False)
    assert not cancelled.end_supersedes_step()
    for stage in (cancelled, fresh):
        assert stage.steps == 1  # only the last pass ran
    assert cancelled.counters() == fresh.counters()
    assert cancelled.clustering.labels == fresh.clustering.labels


async def test_a_speakers_label_is_settled_once_its_lead_outruns_what_is_left() -> None:
    async with InferenceWorker(name="test") as worker:
        stage = SpeakerStage(stream="mic", segmenter=BandSegmenter(), embedder=BandEmbedder(),
                             worker=worker, options=OPTIONS, live=True, arrivals=ArrivalLog())
        audio = voice(4.0, pitch_hz=LOW)

        def final(start: float, end: float) -> CaptionFinal:
            return CaptionFinal(stream="mic", start=start, end=end, segment=0, text="x")

        stage.on_start(SegmentStart(0, 0))
        assert not stage.settled(final(0.0, 4.0))  # nothing analysed yet
        stage.on_audio(SegmentAudio(0, 0, audio))
        await stage.step()  # frames released up to 4 s - latency_s
        # 3.5 s of one voice against at most latency_s + merge_gap_s still to come.
        assert stage.settled(final(0.0, 4.0))
        assert stage.annotate(final(0.0, 4.0)).speaker == "S1"
        # The last second: 0.5 s heard against 0.7 s that could still go to another voice.
        assert not stage.settled(final(3.0, 4.0))
        # Another stream's final: nothing to wait for.
        assert stage.settled(CaptionFinal(stream="other", start=3.0, end=4.0, segment=0,
                                          text="x"))
        await stage.on_end(SegmentEnd(0, len(audio), False))
        assert stage.annotate(final(3.0, 4.0)).speaker == "S1"


class LabelOnly(SegmentEcho):
    """An annotator with annotate() alone (no settled()): its events wait for its close."""

    name = "label-only"

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        return []

    def annotate(self, event: Event) -> Event:
        return labelled(event, "Ann")


@pytest.mark.parametrize("live", [True, False])
async def test_an_annotator_without_settled_still_annotates(live: bool) -> None:
    _, events = await run([SegmentEcho, LabelOnly], live=live)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert finals
    assert all(f.speaker == "Ann" for f in finals)


async def test_a_final_is_not_settled_while_diarization_is_off() -> None:
    """Switched off during a close and back on before the speakers stage's last pass: the
    final must wait for that pass, which labels it."""
    async with InferenceWorker(name="test") as worker:
        switch = DiarizationSwitch()
        stage = SpeakerStage(stream="mic", segmenter=BandSegmenter(), embedder=BandEmbedder(),
                             worker=worker, options=OPTIONS, live=True, arrivals=ArrivalLog(),
                             switch=switch)
        audio = voice(4.0, pitch_hz=LOW)
        stage.on_start(SegmentStart(0, 0))
        stage.on_audio(SegmentAudio(0, 0, audio))
        await stage.step()
        final = CaptionFinal(stream="mic", start=0.0, end=4.0, segment=0, text="x")
        assert stage.settled(final)
        switch.set(False)  # a control command while the caption stage closes the segment
        assert not stage.settled(final)
        switch.set(True)  # back on before the speakers stage's last pass
        await stage.on_end(SegmentEnd(0, len(audio), False))
        assert stage.annotate(final).speaker == "S1"
