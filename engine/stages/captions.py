"""Caption scheduling for one stream: VAD segments in, caption events out.

Per segment it keeps a `StreamingCtc` state (models/streaming.py) and decides which window
to encode now. Files and `--fast` runs (`live=False`) encode every hop-grid step in order, so
results never depend on timing and `harken transcribe` equals `harken run --fast`. Live runs
(`live=True`) jump to the newest step when inference falls behind: the steps in between are
merged into one wider window (counted), which encodes all their audio but makes one partial
update instead of several. Finals are always made.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from harken.engine.events import CaptionFinal, CaptionPartial, Event, StreamError, Word
from harken.engine.metrics import ArrivalLog, ClosedSegment, FinalLog, Percentiles
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.engine.worker import PRIORITY_CAPTIONS, InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import InferenceError
from harken.models.geometry import FrameGeometry
from harken.models.streaming import StreamingCtc, StreamingOptions, Window
from harken.models.transcript import Transcript


async def _nothing() -> list[Event]:
    return []


class Captioner(Protocol):
    """What the scheduler needs of a CTC model (models/captions.CtcCaptioner has it)."""

    @property
    def model_id(self) -> str: ...
    @property
    def geometry(self) -> FrameGeometry: ...
    @property
    def normalize(self) -> bool: ...
    @property
    def batchable(self) -> bool: ...

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]: ...
    def decode(self, logprobs: np.ndarray, *, start_s: float) -> Transcript: ...


@dataclass
class _Segment:
    id: int
    start: int  # stream sample of the segment's first sample
    state: StreamingCtc
    shown_text: str = ""


def _words(transcript: Transcript) -> tuple[Word, ...]:
    return tuple(Word(word=w.word, start=w.start, end=w.end) for w in transcript.words)


class CaptionStage:
    """The captions task on one stream (a `Stage` of engine/stages/base.py)."""

    name = "captions"

    def __init__(self, *, stream: str, captioner: Captioner, worker: InferenceWorker,
                 options: StreamingOptions, live: bool, arrivals: ArrivalLog,
                 finals: FinalLog | None = None) -> None:
        """`finals`: where closed segments' log-probs go for the refine stage (None: kept
        nowhere)."""
        self.stream = stream
        self.captioner = captioner
        self.options = options
        self.live = live
        self.partial_latency = Percentiles()
        # End of the segment's audio -> its final decoded here, for segments that ended at a
        # pause (as the engine's StreamState.final_latency, which times the final when it is
        # published: later when other stages close the segment too, e.g. the speaker label).
        self.final_ready_latency = Percentiles()
        self.encoded_samples = 0
        self._merged_closed = 0  # steps skipped in segments that have ended
        self.failed_windows = 0
        self._worker = worker
        self._arrivals = arrivals
        self._finals = finals
        self._segment: _Segment | None = None

    @property
    def model_id(self) -> str:
        return self.captioner.model_id

    @property
    def merged_steps(self) -> int:
        """Steps merged into a wider window under load so far (live mode only), over all
        segments."""
        current = self._segment.state.merged_steps if self._segment is not None else 0
        return self._merged_closed + current

    def counters(self) -> dict[str, int]:
        return {"caption_encoded_samples": self.encoded_samples,
                "caption_steps_merged": self.merged_steps,
                "caption_failed_windows": self.failed_windows}

    def latencies(self) -> dict[str, float | None]:
        return {"caption_latency_p50_s": self.partial_latency.get(50),
                "caption_latency_p95_s": self.partial_latency.get(95),
                "final_ready_latency_p50_s": self.final_ready_latency.get(50),
                "final_ready_latency_p95_s": self.final_ready_latency.get(95)}

    def background(self) -> AsyncIterator[Event] | None:
        return None

    def on_start(self, start: SegmentStart) -> None:
        self._segment = _Segment(
            id=start.segment, start=start.start,
            state=StreamingCtc(geometry=self.captioner.geometry, options=self.options,
                               normalize=self.captioner.normalize),
        )

    def on_audio(self, audio: SegmentAudio) -> None:
        seg = self._segment
        if seg is None or seg.id != audio.segment:
            return
        seg.state.push(audio.samples)

    async def step(self) -> list[Event]:
        """Encode the windows now due; returns the partial to show (at most one)."""
        seg = self._segment
        if seg is None:
            return []
        events: list[Event] = []
        while (window := seg.state.next_window(latest=self.live)) is not None:
            if not await self._encode(seg, window, events):
                break
            if self.live:
                break
        if not events:
            return []
        # Only the newest partial matters to a reader; older ones of this call are stale.
        return events[-1:] if isinstance(events[-1], CaptionPartial) else events

    #: on_end takes the segment when called, before its first await (engine/stages/base.py
    #: TakesSegmentAtEnd): the next segment's audio may come while its final is encoded.
    takes_segment_at_end = True

    def on_end(self, end: SegmentEnd) -> Coroutine[Any, Any, list[Event]]:
        seg = self._segment
        if seg is None or seg.id != end.segment:
            return _nothing()
        self._segment = None
        return self._close(seg, end)

    async def _close(self, seg: _Segment, end: SegmentEnd) -> list[Event]:
        self._merged_closed += seg.state.merged_steps
        events: list[Event] = []
        seg.state.truncate(end.end - seg.start)
        # Finals never skip: bring every step up to date, then close the segment.
        if not self.live:
            while (window := seg.state.next_window(latest=False)) is not None:
                await self._encode(seg, window, events, emit=False)
        window = seg.state.final_window()
        if window is not None:
            await self._encode(seg, window, events, emit=False)
        logprobs = seg.state.logprobs()
        transcript = self.captioner.decode(logprobs, start_s=seg.start / SAMPLE_RATE)
        arrived = self._arrivals.time_of(end.end)
        if arrived is not None and not end.split:
            self.final_ready_latency.add(time.monotonic() - arrived)
        words = _words(transcript)
        if self._finals is not None:
            self._finals.put(ClosedSegment(segment=seg.id, start=seg.start, logprobs=logprobs,
                                           text=transcript.text, words=words))
        events.append(CaptionFinal(
            stream=self.stream, start=seg.start / SAMPLE_RATE, end=end.end / SAMPLE_RATE,
            segment=seg.id, text=transcript.text, words=words, model=self.captioner.model_id,
        ))
        return events

    async def _encode(self, seg: _Segment, window: Window, events: list[Event], *,
                      emit: bool = True) -> bool:
        try:
            logprobs = await self._worker.encode(self.captioner, window.samples,
                                                  priority=PRIORITY_CAPTIONS)
        except InferenceError as exc:
            self.failed_windows += 1
            events.append(StreamError(stream=self.stream, start=(seg.start + window.start)
                                      / SAMPLE_RATE, end=(seg.start + window.end) / SAMPLE_RATE,
                                      message=str(exc)))
            return False
        seg.state.accept(window, logprobs)
        self.encoded_samples += len(window.samples)
        if not emit:
            return True
        transcript = self.captioner.decode(seg.state.logprobs(), start_s=seg.start / SAMPLE_RATE)
        arrived = self._arrivals.time_of(seg.start + window.end)
        if arrived is not None:
            self.partial_latency.add(time.monotonic() - arrived)
        if transcript.text != seg.shown_text:
            seg.shown_text = transcript.text
            events.append(CaptionPartial(
                stream=self.stream, start=seg.start / SAMPLE_RATE,
                end=(seg.start + window.end) / SAMPLE_RATE, segment=seg.id,
                text=transcript.text, words=_words(transcript), model=self.captioner.model_id,
            ))
        return True
