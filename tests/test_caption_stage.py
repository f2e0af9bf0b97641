"""The caption stage with a fake model: skipping under load is counted across segments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harken.engine.events import CaptionFinal, CaptionPartial
from harken.engine.metrics import ArrivalLog
from harken.engine.stages.captions import CaptionStage
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.geometry import FrameGeometry
from harken.models.streaming import StreamingOptions
from harken.models.transcript import Transcript

VOCAB = 4


class FakeCaptioner:
    """Frame-count-correct log-probs; the text is the number of frames decoded."""

    model_id = "fake"
    geometry = FrameGeometry.from_conv((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))
    normalize = False
    batchable = True

    def __init__(self) -> None:
        self.windows: list[int] = []

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.windows += [len(w) for w in windows]
        return [np.full((self.geometry.num_frames(len(w)), VOCAB), -np.log(VOCAB), np.float32)
                for w in windows]

    def decode(self, logprobs: np.ndarray, *, start_s: float) -> Transcript:
        return Transcript(text=str(len(logprobs)), words=())


async def run_segments(*, live: bool, chunk_s: float, block_s: float | None = None
                       ) -> tuple[CaptionStage, list[object]]:
    """Two 4 s segments; a step after every `chunk_s` of audio, pushed in `block_s` blocks
    (one push per chunk when None)."""
    captioner = FakeCaptioner()
    events: list[object] = []
    async with InferenceWorker(name="cpu") as worker:
        stage = CaptionStage(stream="s", captioner=captioner, worker=worker, live=live,
                             options=StreamingOptions(), arrivals=ArrivalLog())
        position = 0
        for segment in range(2):
            stage.on_start(SegmentStart(segment, position))
            length = 4 * SAMPLE_RATE
            chunk = round(chunk_s * SAMPLE_RATE)
            block = round((block_s or chunk_s) * SAMPLE_RATE)
            for offset in range(0, length, chunk):
                n = min(chunk, length - offset)
                for at in range(offset, offset + n, block):
                    stage.on_audio(SegmentAudio(segment, position + at,
                                                np.zeros(min(block, offset + n - at),
                                                         np.float32)))
                events += await stage.step()
            events += await stage.on_end(SegmentEnd(segment, position + length, False))
            position += length
    return stage, events


async def test_live_skips_stale_steps_and_counts_them_over_all_segments() -> None:
    # 0.1 s blocks, a step every 2 s (as after a slow forward pass): live jumps to the
    # newest 0.5 s step, skipping three of every four, in both segments.
    stage, events = await run_segments(live=True, chunk_s=2.0, block_s=0.1)
    assert stage.merged_steps == 2 * 3 * 2  # 2 segments x 2 chunks x 3 merged steps
    assert stage.counters()["caption_steps_merged"] == stage.merged_steps
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    # Finals never skip: every frame of each 4 s segment is decoded.
    assert [f.text for f in finals] == [str(FakeCaptioner.geometry.num_frames(4 * SAMPLE_RATE))] * 2


async def test_files_never_skip() -> None:
    stage, events = await run_segments(live=False, chunk_s=2.0)
    assert stage.merged_steps == 0
    assert any(isinstance(e, CaptionPartial) for e in events)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    assert len(finals) == 2


async def test_on_end_takes_the_segment_when_called() -> None:
    """The engine hands the stage the next segment while the last final is still encoded
    (takes_segment_at_end): that final must be the same as if it had waited."""
    finals: dict[bool, list[str]] = {}
    for overlap in (False, True):
        async with InferenceWorker(name="cpu") as worker:
            stage = CaptionStage(stream="s", captioner=FakeCaptioner(), worker=worker,
                                 live=True, options=StreamingOptions(), arrivals=ArrivalLog())
            assert stage.takes_segment_at_end
            length = round(2.3 * SAMPLE_RATE)
            stage.on_start(SegmentStart(0, 0))
            stage.on_audio(SegmentAudio(0, 0, np.zeros(length, np.float32)))
            ending = stage.on_end(SegmentEnd(0, length, False))
            if not overlap:
                events = list(await ending)
            stage.on_start(SegmentStart(1, length))
            stage.on_audio(SegmentAudio(1, length, np.zeros(SAMPLE_RATE, np.float32)))
            if overlap:
                events = list(await ending)
            events += await stage.on_end(SegmentEnd(1, length + SAMPLE_RATE, False))
        finals[overlap] = [e.text for e in events if isinstance(e, CaptionFinal)]
    assert finals[True] == finals[False]
    assert finals[True] == [str(FakeCaptioner.geometry.num_frames(n))
                            for n in (round(2.3 * SAMPLE_RATE), SAMPLE_RATE)]
