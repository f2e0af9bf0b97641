"""Live diarization and speaker identification on one stream (a `Stage`, engine/stages/base.py).

Only VAD speech reaches the models. The stage keeps the stream's speech on a *speech clock*
(silence between VAD segments removed) and, every `step_s` of new speech, analyses the last
`window_s` of it (diart's rolling window): the segmentation model gives local speaker
activity, the x-vector model gives frame features from which each active local speaker's
embedding is pooled with overlap-aware weights, and models/clustering.py maps local speakers
to the stream's global speakers (seeded with the enrolled voiceprints). Overlapping window
outputs are averaged and each 20 ms frame is released `latency_s` after it was heard, then
binarised into turns; a turn closes at a pause (or a gap between VAD segments) and becomes a
`speaker_turn` event on the stream clock. At each segment end everything heard so far is
released, so a caption final of that segment can be labelled with its speaker
(`annotate`, called by the engine for the events a segment end produces).

A `DiarizationSwitch` shared by the session's streams turns the task off and on while it
runs (the TUI's `d`): off, the stage releases the turns heard so far, then ignores new audio
and labels no caption; on again, it goes on with the speakers it already knows.

Files and --fast runs (`live=False`) analyse every step in order. Live runs that fall
behind (inference slower than speech) do not skip steps: the next analysis widens instead,
ending at the newest step and reaching back over the steps it stands in for, so that every
frame is still seen with as much context as the steps would have given it; fewer, wider
passes cost less than the steps they replace. Stats count the widened analyses
(`speaker_steps_widened`) and the steps they merged (`speaker_steps_merged`); a window
widens to MAX_WIDEN times `window_s` at most, and only steps beyond that are skipped
(`speaker_steps_skipped`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from harken.engine.events import CaptionFinal, Event, SpeakerTurn, StreamError
from harken.engine.metrics import ArrivalLog, Percentiles
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.engine.worker import PRIORITY_SPEAKERS, InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.clustering import (
    ActivityAggregator,
    ClusteringOptions,
    OnlineClustering,
    Turn,
    TurnTracker,
    Voiceprint,
    overlap_weights,
)
from harken.models.errors import InferenceError
from harken.models.geometry import FrameGeometry

TURNS_KEPT = 512  # closed turns remembered for labelling captions
PIECES_KEPT = 4096  # speech-clock -> stream-clock pieces kept at most
MAX_WIDEN = 2  # a widened analysis spans at most this many window_s (bounded compute)


class Segmenter(Protocol):
    """What the stage needs of a segmentation model (models/diarization.FrameSegmenter)."""

    @property
    def model_id(self) -> str: ...
    @property
    def geometry(self) -> FrameGeometry: ...
    @property
    def num_speakers(self) -> int: ...
    @property
    def batchable(self) -> bool: ...

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Embedder(Protocol):
    """What the stage needs of an x-vector model (models/speakers.XVectorEmbedder)."""

    @property
    def model_id(self) -> str: ...
    @property
    def geometry(self) -> FrameGeometry: ...
    @property
    def tdnn_context(self) -> int: ...
    @property
    def batchable(self) -> bool: ...

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]: ...
    def pool(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DiarizationOptions:
    window_s: float = 5.0  # s of speech each analysis sees
    step_s: float = 0.5  # s of new speech between analyses
    latency_s: float = 0.5  # s after which a frame is final (step_s <= latency_s <= window_s)
    min_turn_s: float = 0.1  # shorter turns are dropped
    merge_gap_s: float = 0.2  # shorter pauses stay inside a turn
    clustering: ClusteringOptions = field(default_factory=ClusteringOptions)

    def __post_init__(self) -> None:
        for name in ("window_s", "step_s", "latency_s", "min_turn_s", "merge_gap_s"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if not 0.05 <= self.step_s <= self.window_s:
            raise ValueError(f"step_s ({self.step_s}) must be at least 0.05 s and at most "
                             f"window_s ({self.window_s})")
        if not self.step_s <= self.latency_s <= self.window_s:
            raise ValueError(f"latency_s ({self.latency_s}) must lie between step_s "
                             f"({self.step_s}) and window_s ({self.window_s})")
        if self.min_turn_s < 0 or self.merge_gap_s < 0:
            raise ValueError("min_turn_s and merge_gap_s must not be negative")


@dataclass
class _Piece:
    speech: int  # speech-clock sample of the piece's first sample
    stream: int  # stream-clock sample of the same
    length: int
    pad: bool = False  # zeros that align a gap to the frame grid: they map to `stream`

    @property
    def speech_end(self) -> int:
        return self.speech + self.length

    @property
    def stream_end(self) -> int:
        return self.stream + self.length


class SpeechBuffer:
    """The recent VAD speech of a stream on a speech clock, and its stream-clock map.

    Audio a split segment re-sends (the same stream samples twice, see engine/vad.py) is
    taken once. Memory: the caller prunes what no window or turn needs any more.
    """

    def __init__(self) -> None:
        self._audio = np.zeros(0, dtype=np.float32)
        self._base = 0  # speech-clock sample of _audio[0]
        self._pieces: collections.deque[_Piece] = collections.deque(maxlen=PIECES_KEPT)
        self._stream_end = -1  # one past the last stream sample taken

    @property
    def end(self) -> int:
        """Speech-clock samples received."""
        return self._base + int(self._audio.shape[0])

    @property
    def start(self) -> int:
        return self._base

    def push(self, stream_start: int, samples: np.ndarray) -> None:
        if stream_start < self._stream_end:  # re-sent after a split: keep the new part only
            samples = samples[self._stream_end - stream_start:]
            stream_start = self._stream_end
        n = int(samples.shape[0])
        if n == 0:
            return
        last = self._pieces[-1] if self._pieces else None
        if last is not None and not last.pad and last.stream_end == stream_start \
                and last.speech_end == self.end:
            last.length += n
        else:
            self._pieces.append(_Piece(self.end, stream_start, n))
        self._audio = np.concatenate([self._audio, np.asarray(samples, dtype=np.float32)])
        self._stream_end = stream_start + n

    def pad_to(self, multiple: int) -> None:
        """Zeros up to the next multiple of `multiple` samples, at a gap in the stream.

        So that frames never straddle two VAD segments; the padding maps to the stream
        position where the speech ended.
        """
        n = -self.end % multiple
        if n and self._pieces:
            self._pieces.append(_Piece(self.end, self._pieces[-1].stream_end, n, pad=True))
            self._audio = np.concatenate([self._audio, np.zeros(n, dtype=np.float32)])

    def samples(self, start: int, end: int) -> np.ndarray:
        if start < self._base or end > self.end:
            raise ValueError(f"speech [{start}, {end}) is not buffered "
                             f"([{self._base}, {self.end}) is)")
        return self._audio[start - self._base:end - self._base]

    def to_stream(self, pos: int, *, end: bool = False) -> int:
        """Stream sample of speech sample `pos` (`end`: `pos` is an exclusive end)."""
        probe = pos - 1 if end else pos
        for piece in reversed(self._pieces):
            if piece.speech <= probe < piece.speech_end:
                if piece.pad:
                    return piece.stream
                return piece.stream + (probe - piece.speech) + (1 if end else 0)
        if self._pieces and probe >= self._pieces[-1].speech_end:
            last = self._pieces[-1]
            return last.stream_end + (probe - last.speech_end) + (1 if end else 0)
        raise ValueError(f"speech sample {pos} is no longer mapped")

    def prune(self, *, audio_from: int, pieces_from: int) -> None:
        """Forget audio before `audio_from` and stream pieces that end before `pieces_from`."""
        drop = min(max(0, audio_from - self._base), int(self._audio.shape[0]))
        if drop:
            self._audio = self._audio[drop:].copy()
            self._base += drop
        while len(self._pieces) > 1 and self._pieces[0].speech_end <= pieces_from:
            self._pieces.popleft()


@dataclass(frozen=True, slots=True)
class _TurnSpan:
    start: float  # stream seconds
    end: float
    label: str


def _fit_frames(activity: np.ndarray, n: int, width: int) -> np.ndarray:
    """Model frames -> exactly `n` clock frames (the conv stack yields one frame fewer)."""
    act = np.asarray(activity, dtype=np.float32).reshape(-1, width)
    if act.shape[0] >= n:
        return act[:n]
    if act.shape[0] == 0:
        return np.zeros((n, width), dtype=np.float32)
    pad = np.repeat(act[-1:], n - act.shape[0], axis=0)
    return np.concatenate([act, pad])


class DiarizationSwitch:
    """Diarization on or off for every stream of a session (one shared flag)."""

    def __init__(self, *, on: bool = True) -> None:
        self._on = on

    @property
    def on(self) -> bool:
        return self._on

    def set(self, on: bool) -> None:
        self._on = on


class SpeakerStage:
    """Diarization + identification on one stream (a `Stage` and an annotator)."""

    name = "speakers"

    def __init__(self, *, stream: str, segmenter: Segmenter, embedder: Embedder,
                 worker: InferenceWorker, options: DiarizationOptions, live: bool,
                 arrivals: ArrivalLog, voiceprints: Sequence[Voiceprint] = (),
                 notice: str | None = None, switch: DiarizationSwitch | None = None) -> None:
        self.stream = stream
        self.switch = switch if switch is not None else DiarizationSwitch()
        self.segmenter = segmenter
        self.embedder = embedder
        self.options = options
        self.live = live
        self.steps = 0
        self.skipped_steps = 0
        self.widened_steps = 0  # analyses that stood in for steps live runs fell behind on
        self.merged_steps = 0  # steps those analyses stood in for
        self.failed_windows = 0
        self.step_time = Percentiles()
        self.turn_latency = Percentiles()
        self.clustering = OnlineClustering(options=options.clustering, voiceprints=voiceprints)
        self._worker = worker
        self._arrivals = arrivals
        self._notice = notice
        self._frame = frame = segmenter.geometry.frame_samples
        self._step = max(1, round(options.step_s * SAMPLE_RATE / frame)) * frame
        self._window = max(self._step, round(options.window_s * SAMPLE_RATE / frame) * frame)
        self._latency = max(1, round(options.latency_s * SAMPLE_RATE / frame))  # frames
        frame_s = frame / SAMPLE_RATE
        self._tracker = TurnTracker(threshold=options.clustering.tau_active,
                                    min_turn=round(options.min_turn_s / frame_s),
                                    merge_gap=round(options.merge_gap_s / frame_s))
        self._aggregator = ActivityAggregator(max_windows=self._window // self._step + 8)
        self._buffer = SpeechBuffer()
        self._done = 0  # speech-clock end of the last window analysed
        self._next_end = self._step
        self._history: collections.deque[_TurnSpan] = collections.deque(maxlen=TURNS_KEPT)
        self._active = self.switch.on  # what the stage last acted on
        self._flush_due = False  # switched off: release what was heard before
        self._supersedable = False  # a step's analysis in flight that a segment end may cancel

    # ------------------------------------------------------------------ Stage protocol

    def counters(self) -> dict[str, int]:
        return {"speaker_steps": self.steps,
                "speaker_steps_skipped": self.skipped_steps,
                "speaker_steps_widened": self.widened_steps,
                "speaker_steps_merged": self.merged_steps,
                "speaker_failed_windows": self.failed_windows,
                "speakers_anonymous": self.clustering.anonymous_speakers}

    def latencies(self) -> dict[str, float | None]:
        return {"speaker_step_p50_s": self.step_time.get(50),
                "speaker_step_p95_s": self.step_time.get(95),
                "speaker_turn_latency_p50_s": self.turn_latency.get(50),
                "speaker_turn_latency_p95_s": self.turn_latency.get(95)}

    def background(self) -> AsyncIterator[Event] | None:
        return None

    def on_start(self, start: SegmentStart) -> None:
        pass  # the speech clock runs across segments: nothing to reset

    def on_audio(self, audio: SegmentAudio) -> None:
        if self._switched_on():
            self._buffer.push(audio.start, audio.samples)

    async def step(self) -> list[Event]:
        events: list[Event] = []
        if self._notice is not None:
            events.append(StreamError(stream=self.stream, start=0.0, end=0.0,
                                      message=self._notice))
            self._notice = None
        on = self._switched_on()
        if self._flush_due:
            self._flush_due = False
            await self._finish(events, close=True)
        if not on:
            return events
        while self._buffer.end >= self._next_end:
            end, behind = self._next_end, 0
            if self.live:
                behind = (self._buffer.end - self._next_end) // self._step
                end += behind * self._step
            # Live, a segment's end cancels this analysis (end_supersedes_step) when the
            # step has nothing else to lose: the stage is changed only after the await.
            self._supersedable = self.live and not events
            try:
                await self._analyse(end, events, behind=behind)
            finally:
                self._supersedable = False
            self._next_end = end + self._step
            if self.live:
                break
        self._prune()
        return events

    def end_supersedes_step(self) -> bool:
        """Whether a segment's end may cancel the step in flight: on_end's last analysis
        covers its frames, so its passes still queued in the worker would only delay the
        segment's final (which waits for this stage's speaker label)."""
        return self._supersedable

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        """Analyse the rest of the segment and release every frame heard so far."""
        events: list[Event] = []
        on = self._switched_on()
        if not self.live or self._flush_due:
            events += await self.step()
        if not on:
            return events
        if not end.split:  # a gap follows: the next segment starts on the frame grid
            self._buffer.pad_to(self._frame)
        await self._finish(events, close=not end.split)
        return events

    def _switched_on(self) -> bool:
        """Whether diarization is on; notes a switch-off, whose flush the next step does."""
        on = self.switch.on
        if not on and self._active:
            self._buffer.pad_to(self._frame)  # the audio ignored from here on is a gap
            self._flush_due = True
        self._active = on
        return on

    async def _finish(self, events: list[Event], *, close: bool) -> None:
        """Analyse the buffered rest and release every frame heard so far; `close`: a gap
        follows, so the open turns end too."""
        final = self._buffer.end // self._frame * self._frame
        if final > self._done:
            behind = max(0, (final - self._done - 1) // self._step) if self.live else 0
            await self._analyse(final, events, behind=behind)
        events += self._release(self._done // self._frame)
        if close:  # a gap in the stream follows: no turn runs across it
            events += self._turn_events(self._tracker.close())
        self._next_end = self._done + self._step
        self._prune()

    # ------------------------------------------------------------------ annotation

    def annotate(self, event: Event) -> Event:
        """A caption final of this stream gets the speaker who talked most during it."""
        if not isinstance(event, CaptionFinal) or event.stream != self.stream \
                or event.speaker is not None or not self.switch.on:
            return event
        spans = list(self._history) + [self._span(t) for t in self._tracker.open_turns()]
        talk: dict[str, float] = {}
        for span in spans:
            overlap = min(span.end, event.end) - max(span.start, event.start)
            if overlap > 0:
                talk[span.label] = talk.get(span.label, 0.0) + overlap
        if not talk:
            return event
        speaker = max(talk.items(), key=lambda item: (item[1], item[0]))[0]
        return dataclasses.replace(event, speaker=speaker)

    def settled(self, event: Event) -> bool:
        """Whether annotate()'s speaker for `event` is already decided before this stage
        closes the segment: the leader's lead is longer than all the talk that could still
        count against it (the frames not released yet, a merge gap by which an open turn
        may still bridge a pause, and the leader's own open turns too short to be kept
        yet). The engine then publishes a caption final without waiting for the segment's
        last analysis, which would label it the same."""
        if not isinstance(event, CaptionFinal) or event.stream != self.stream \
                or event.speaker is not None:
            return True
        if not self.switch.on:
            return False  # it may be back on before the close, which is then quick anyway
        position = self._tracker.position
        if position is None:
            return False
        pending = max(0.0, event.end - self._stream_s(position * self._frame, end=True)) \
            + self.options.merge_gap_s
        sure: dict[str, float] = {}  # talk that can only grow
        talk: dict[str, float] = {}  # and with open turns that may yet be dropped
        for span, kept in [*((s, True) for s in self._history),
                           *((self._span(t), t.end - t.start >= self._tracker.min_turn)
                             for t in self._tracker.open_turns())]:
            overlap = min(span.end, event.end) - max(span.start, event.start)
            if overlap > 0:
                talk[span.label] = talk.get(span.label, 0.0) + overlap
                if kept:
                    sure[span.label] = sure.get(span.label, 0.0) + overlap
        if not talk:
            return False
        leader = max(talk.items(), key=lambda item: (item[1], item[0]))[0]
        runner_up = max((t for label, t in talk.items() if label != leader), default=0.0)
        return sure.get(leader, 0.0) - runner_up > pending

    # ------------------------------------------------------------------ internals

    def _merged(self, behind: int) -> int:
        """How many of `behind` steps a live run fell behind on one analysis stands in for
        (its window widened by as many steps); the rest are skipped."""
        return min(behind * self._step, (MAX_WIDEN - 1) * self._window) // self._step

    def _count_widened(self, behind: int) -> None:
        if behind <= 0:
            return
        merged = self._merged(behind)
        self.widened_steps += 1
        self.merged_steps += merged
        self.skipped_steps += behind - merged
        # The clustering's clock counts steps of speech: one analysis stands in for these.
        self.clustering.skip(behind)

    async def _analyse(self, end: int, events: list[Event], *, behind: int = 0) -> None:
        """One rolling-window analysis ending at speech sample `end` (a frame multiple),
        over the last window_s, widened by the steps it stands in for when `behind` steps
        were fallen behind on. Nothing of the stage changes before the models' answer, so
        a cancelled analysis leaves it as it was."""
        width = self._window + self._merged(behind) * self._step if behind > 0 else self._window
        start = max(self._buffer.start, end - width)
        start += (-start) % self._frame  # windows start on the frame grid
        if end - start < self._frame:
            self._done = max(self._done, end)
            self._count_widened(behind)
            return
        samples = self._buffer.samples(start, end)
        started = time.perf_counter()
        outs = await asyncio.gather(
            self._worker.encode(self.segmenter, samples, priority=PRIORITY_SPEAKERS),
            self._worker.encode(self.embedder, samples, priority=PRIORITY_SPEAKERS),
            return_exceptions=True)
        seg_out, emb_out = outs
        self._done = max(self._done, end)
        self._count_widened(behind)
        for out in (seg_out, emb_out):
            if isinstance(out, BaseException):
                if not isinstance(out, InferenceError):
                    raise out
                self.failed_windows += 1
                events.append(StreamError(
                    stream=self.stream, start=self._stream_s(start),
                    end=self._stream_s(end, end=True), message=f"speakers: {out}"))
                return
        if not isinstance(seg_out, np.ndarray) or not isinstance(emb_out, np.ndarray):
            raise TypeError("the speaker models must return arrays")
        n = (end - start) // self._frame
        activity = _fit_frames(seg_out, n, self.segmenter.num_speakers)
        weights = self._feature_weights(overlap_weights(activity), emb_out.shape[0])
        embeddings = self.embedder.pool(emb_out, weights)
        assignment = self.clustering.identify(activity, embeddings)
        self._aggregator.add(start // self._frame,
                             self.clustering.to_global(assignment, activity))
        self.steps += 1
        self.step_time.add(time.perf_counter() - started)
        events += self._release(end // self._frame - self._latency)

    def _feature_weights(self, weights: np.ndarray, n_features: int) -> np.ndarray:
        """Segmentation-frame weights resampled onto the embedder's TDNN frames."""
        if n_features == 0:
            return np.zeros((0, weights.shape[1]), dtype=np.float32)
        geo = self.embedder.geometry
        j = np.arange(n_features, dtype=np.float64)
        centre = (j + self.embedder.tdnn_context / 2) * geo.frame_samples \
            + geo.receptive_samples / 2
        index = np.clip((centre // self._frame).astype(np.int64), 0, weights.shape[0] - 1)
        return np.asarray(weights[index], dtype=np.float32)

    def _release(self, until: int) -> list[Event]:
        start, activity = self._aggregator.release(until)
        if activity.shape[0] == 0:
            return []
        return self._turn_events(self._tracker.push(start, activity))

    def _turn_events(self, turns: list[Turn]) -> list[Event]:
        events: list[Event] = []
        now = time.monotonic()
        for turn in turns:
            span = self._span(turn)
            self._history.append(span)
            arrived = self._arrivals.time_of(self._buffer.to_stream(turn.end * self._frame,
                                                                     end=True))
            if arrived is not None:
                self.turn_latency.add(now - arrived)
            events.append(SpeakerTurn(
                stream=self.stream, start=span.start, end=span.end, speaker=span.label,
                score=round(turn.score, 4),
                enrolled=self.clustering.is_enrolled(turn.speaker)))
        return events

    def _span(self, turn: Turn) -> _TurnSpan:
        return _TurnSpan(start=self._stream_s(turn.start * self._frame),
                         end=self._stream_s(turn.end * self._frame, end=True),
                         label=self.clustering.labels[turn.speaker])

    def _stream_s(self, speech: int, *, end: bool = False) -> float:
        return self._buffer.to_stream(speech, end=end) / SAMPLE_RATE

    def _prune(self) -> None:
        released = self._aggregator.released * self._frame
        opened = [t.start * self._frame for t in self._tracker.open_turns()]
        audio_from = max(0, min(self._next_end - self._window, self._buffer.end - self._window))
        pieces_from = min([released, audio_from, *opened])
        self._buffer.prune(audio_from=audio_from, pieces_from=pieces_from)
