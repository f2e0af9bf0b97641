"""A caption final published early because the speakers stage said
its label was settled carries the label the stage gives once it has closed the segment,
live, with the speaker passes slow enough that segment ends supersede steps in flight."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import numpy as np
from test_pipeline import ListSource, run_engine
from test_speakers_stage import OPTIONS, WEBRTC, BandEmbedder, BandSegmenter, FinalStage
from tiny_speaker_models import voice

from harken.engine.events import CaptionFinal, Event, Stats
from harken.engine.stages.base import Stage, StageContext
from harken.engine.stages.speakers import SpeakerStage
from harken.engine.vad import SegmentEnd, SegmentStart
from harken.models.audio import SAMPLE_RATE

PASS_S = 0.03  # s of (sleeping) model time per window: the speaker passes fall behind
PACE_S = 0.01  # s between 0.1 s blocks: 10x real time


class SlowSegmenter(BandSegmenter):
    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        time.sleep(PASS_S * len(windows))
        return super().encode(windows)


class Recording(SpeakerStage):
    """Notes, per segment, whether its final was settled early and the label it gets
    after this stage's own on_end (what the engine published before `settled`)."""

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(stream=ctx.stream, segmenter=SlowSegmenter(), embedder=BandEmbedder(),
                         worker=ctx.worker, options=OPTIONS, live=True, arrivals=ctx.arrivals)
        self.starts: dict[int, int] = {}
        self.after: dict[int, str | None] = {}
        self.early: set[int] = set()

    def on_start(self, start: SegmentStart) -> None:
        self.starts[start.segment] = start.start
        super().on_start(start)

    def settled(self, event: Event) -> bool:
        answer = super().settled(event)
        if answer and isinstance(event, CaptionFinal):
            self.early.add(event.segment)
        return answer

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        events = await super().on_end(end)
        bare = CaptionFinal(stream=self.stream, start=self.starts[end.segment] / SAMPLE_RATE,
                            end=end.end / SAMPLE_RATE, segment=end.segment, text="words")
        self.after[end.segment] = self.annotate(bare).speaker
        return events


def conversation(seed: int) -> np.ndarray:
    """Segments of one to three turns of two voices, some close to even."""
    rng = random.Random(seed)
    parts = []
    for _ in range(12):
        parts.append(np.zeros(round(rng.uniform(0.6, 1.0) * SAMPLE_RATE), np.float32))
        for _ in range(rng.choice([1, 2, 2, 3])):
            parts.append(voice(rng.uniform(0.4, 1.6), pitch_hz=rng.choice([120.0, 1200.0]),
                               seed=rng.randrange(999)))
    parts.append(np.zeros(SAMPLE_RATE, np.float32))
    return np.concatenate(parts)


async def test_an_early_final_has_the_label_waiting_would_give() -> None:
    made: list[Recording] = []

    def speakers(ctx: StageContext) -> Stage:
        made.append(Recording(ctx))
        return made[-1]

    events = await asyncio.wait_for(run_engine(
        ListSource({"a": conversation(0)}, pace_s=PACE_S),
        stages=[lambda ctx: FinalStage(ctx.stream), speakers], live=True, vad=WEBRTC),
        timeout=120)
    stage = made[0]
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert len(finals) >= 10
    assert stage.early  # some finals went out before the stage's last pass
    assert len(stage.early) < len(finals)  # and some waited for it
    assert [(f.segment, f.speaker) for f in finals] == \
        [(f.segment, stage.after[f.segment]) for f in finals]
    stats = [e for e in events if isinstance(e, Stats)][-1]
    assert stats.counters["superseded_steps"] > 0
