"""The second pass of captions on one stream: each finished segment re-decoded by a
sequence-to-sequence model, checked against the CTC text, and timed by CTC alignment.

It runs like translation (engine/stages/translation.py), on the `GenerationWorker` thread,
and its results come out of `background()`: the live CTC path never waits for it. Per
segment it emits exactly one `CaptionRefined`, after that segment's `CaptionFinal`:

- accepted: the refined text, its words timed by forced alignment to the CTC log-probs the
  first pass computed for the segment (models/alignment.py);
- otherwise the CTC text stands, and `reason` says why: the guard rejected the refinement
  (`empty`, `ctc_empty`, `disagrees`, `repeats`: models/guard.py), generation failed
  (`failed`), or a live run skipped it to keep up (`skipped`).

Padding: the refiner gets up to `pad_before_s` of the stream's audio before the segment's
start and `pad_after_s` after its end (docs/refine.md), from a small ring of the stream's
recent audio (`RecentAudio`). Padding never reaches into a neighbouring segment that is
known when it is taken (that segment transcribes its own words; padding into it repeats
them): before-padding stops at the previous segment's end, after-padding at the next
segment's start if the VAD has opened it by then. A segment waits for its after-padding to
arrive (that much audio, no more) before it is queued; at the end of the stream it goes
with what there is. The event's times stay the segment's. Both are 0 by default: measured
on real speech, padding did not recover a word and after-padding repeated words at cuts.

Files and `--fast` (`live=False`) refine every segment in order; a full backlog makes the
stream wait. Live runs keep at most LIVE_BACKLOG waiting segments; older ones are skipped.
The generation thread may be shared with translation: refinement goes first
(REFINE_PRIORITY), so that captions are refined before they are translated.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionRefined, Event, StreamError, Word
from harken.engine.metrics import ArrivalLog, ClosedSegment, FinalLog, Percentiles
from harken.engine.stages.recorder import RecentAudio, SegmentRecorder, WholeSegmentStage
from harken.engine.stages.translation import GenerationError, GenerationWorker
from harken.engine.vad import SegmentEnd, SegmentStart
from harken.models.alignment import CtcVocabulary, align_words
from harken.models.audio import SAMPLE_RATE
from harken.models.guard import GuardOptions, GuardReason, judge
from harken.models.scoring import text_after

if TYPE_CHECKING:  # models/refine.py imports torch; the engine core must not
    from harken.models.refine import RefinedText

ORDERED_BACKLOG = 8  # segments waiting at most in files/--fast before the stream waits
LIVE_BACKLOG = 2  # segments waiting at most live: older ones are skipped (CTC text stands)
SKIPPED_KEPT = 64  # skipped segments waiting to be announced; older ones go unannounced
MAX_SEGMENT_S = 120.0  # s of one segment kept at most (the VAD splits long speech sooner)
REFINE_PRIORITY = 0  # before translation (GenerationWorker: lower runs first)
MAX_PAD_S = 2.0  # s of padding at most on each side of a segment
DEFAULT_PAD_BEFORE_S = 0.0  # s (docs/refine.md: chosen by measurement)
DEFAULT_PAD_AFTER_S = 0.0  # s
# s of recent audio kept beyond the padding: a segment starts up to the VAD's split search
# (2 s) before the block that opens it, and one block (up to 1 s from files) comes at once.
RECENT_SLACK_S = 3.0
PADDING_WAITING = 8  # segments waiting for their after-padding at most; older go without
# A segment shorter than DEFAULT_JOIN_SHORT_S that starts less than JOIN_GAP_S after the
# previous one ended was cut inside speech (the VAD's split search), not at a pause: alone,
# Whisper hears a fragment without its start (it dropped a word of one such segment that it
# hears in the whole utterance, docs/refine.md). It is decoded together with the previous
# segment (JOIN_CONTEXT_S at most: that segment's words are decoded again), and its text is
# what follows the previous refined text.
DEFAULT_JOIN_SHORT_S = 3.0  # s
JOIN_GAP_S = 0.1  # s
JOIN_CONTEXT_S = 10.0  # s
FAILED = "failed"
SKIPPED = "skipped"


class Refiner(Protocol):
    """What the stage needs (models/refine.SpeechRefiner has it)."""

    @property
    def model_id(self) -> str: ...

    def refine(self, samples: np.ndarray) -> RefinedText: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RefineStageOptions:
    guard: GuardOptions = field(default_factory=GuardOptions)
    #: Live sinks that wait for refinements give up after this long (files fall back to the
    #: CTC text); a refinement later than that counts in `refine_late`.
    max_wait_s: float = 3.0
    #: s of the stream's audio given to the refiner before a segment's start and after its
    #: end, so that a word cut at the edge is whole (the refined final waits pad_after_s).
    pad_before_s: float = DEFAULT_PAD_BEFORE_S
    pad_after_s: float = DEFAULT_PAD_AFTER_S
    #: s: a shorter segment that follows the previous one without a pause is decoded with it
    #: (0: never; see DEFAULT_JOIN_SHORT_S).
    join_short_s: float = DEFAULT_JOIN_SHORT_S

    def __post_init__(self) -> None:
        if not 0.0 <= self.join_short_s <= JOIN_CONTEXT_S:
            raise ValueError(f"refine join_short_s must be between 0 and {JOIN_CONTEXT_S} s, "
                             f"got {self.join_short_s}")
        if not self.max_wait_s >= 0:
            raise ValueError(f"refine max_wait_s must be >= 0, got {self.max_wait_s}")
        for name in ("pad_before_s", "pad_after_s"):
            value = getattr(self, name)
            if not 0.0 <= value <= MAX_PAD_S:
                raise ValueError(f"refine {name} must be between 0 and {MAX_PAD_S} s, "
                                 f"got {value}")


@dataclass(frozen=True, slots=True)
class _Job:
    segment: int
    start: int  # stream samples
    end: int
    samples: np.ndarray
    closed: ClosedSegment | None  # the first pass of the segment (None: captions failed)


@dataclass(frozen=True, slots=True)
class _Outcome:
    text: str
    words: tuple[Word, ...]
    reason: str
    cer: float | None
    joined: bool = False  # decoded together with the previous segment


@dataclass(frozen=True, slots=True)
class _Refined:
    """The last segment refined and accepted: the context of a short segment after it."""
    end: int  # stream samples
    samples: np.ndarray
    text: str


class RefineStage(WholeSegmentStage):
    """The refine task on one stream (a `Stage` of engine/stages/base.py)."""

    name = "refine"

    def __init__(self, *, stream: str, refiner: Refiner, generator: GenerationWorker,
                 live: bool, arrivals: ArrivalLog, finals: FinalLog,
                 vocabulary: CtcVocabulary | None, frame_s: float,
                 options: RefineStageOptions | None = None) -> None:
        """`vocabulary`/`frame_s`: the CTC model's spelling and frame hop, for alignment
        (None: words get times interpolated over the segment)."""
        self.stream = stream
        self.refiner = refiner
        self.live = live
        self.options = options or RefineStageOptions()
        self.vocabulary = vocabulary
        self.frame_s = frame_s
        self.latency = Percentiles()
        self.refined = 0
        self.rejected = 0
        self.fallbacks = 0
        self.late = 0
        self.joined = 0
        self._previous: _Refined | None = None
        self._generator = generator
        self._arrivals = arrivals
        self._finals = finals
        self._backlog = LIVE_BACKLOG if live else ORDERED_BACKLOG
        self._jobs: collections.deque[_Job] = collections.deque()
        self._skipped: collections.deque[_Job] = collections.deque()
        self._ready = asyncio.Event()  # a job was queued, or the stream ended
        self._space = asyncio.Event()  # a job was taken
        self._published = asyncio.Event()  # a CaptionFinal went out (see annotate)
        self._last_final = -1  # the newest segment whose CaptionFinal went out
        self._final_at: dict[int, float] = {}  # segment -> when its final went out
        self._ended = False
        self._recorder = SegmentRecorder(max_samples=round(MAX_SEGMENT_S * SAMPLE_RATE))
        self._pad_before = round(self.options.pad_before_s * SAMPLE_RATE)
        self._pad_after = round(self.options.pad_after_s * SAMPLE_RATE)
        self._recent: RecentAudio | None = None
        if self._pad_before or self._pad_after:
            self._recent = RecentAudio(capacity=self._pad_before + self._pad_after +
                                       round(RECENT_SLACK_S * SAMPLE_RATE))
        self._before = np.zeros(0, np.float32)  # the open segment's before-padding
        self._previous_end = 0  # the last closed segment's end (stream samples)
        # Closed segments waiting for their after-padding (until stream position `need`),
        # then ready to queue, in order.
        self._padding: collections.deque[tuple[_Job, int]] = collections.deque()
        self._padded: collections.deque[_Job] = collections.deque()

    # ------------------------------------------------------------------ stats

    def counters(self) -> dict[str, int]:
        return {"refine_segments": self.refined, "refine_rejected": self.rejected,
                "refine_fallbacks": self.fallbacks, "refine_late": self.late,
                "refine_joined": self.joined}

    def latencies(self) -> dict[str, float | None]:
        return {"refine_latency_p50_s": self.latency.get(50),
                "refine_latency_p95_s": self.latency.get(95)}

    # ------------------------------------------------------------------ stage

    def on_block(self, block: AudioBlock) -> None:
        """Every block of the stream, before its segment events (engine/stages/base.py
        AudioListener): kept for the padding."""
        if self._recent is None:
            return
        self._recent.add(block)
        self._collect_padding()

    def on_start(self, start: SegmentStart) -> None:
        super().on_start(start)
        if self._padding:  # padding stops where this segment starts
            self._padding = collections.deque((job, min(need, max(job.end, start.start)))
                                              for job, need in self._padding)
            self._collect_padding()
        if self._recent is not None and self._pad_before:
            lo = max(start.start - self._pad_before, self._previous_end)
            self._before = self._recent.take(lo, start.start)

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        recorded = self._recorder.finish(end)
        if recorded is None:
            return []
        samples = recorded.samples
        self._previous_end = end.end
        if self._before.size:
            samples = np.concatenate([self._before, samples])
            self._before = np.zeros(0, np.float32)
        # The caption stage (before this one) has closed the segment already.
        job = _Job(segment=end.segment, start=recorded.start, end=end.end,
                   samples=samples, closed=self._finals.take(end.segment))
        if self._pad_after:
            # A VAD split opens the next segment right at this end (in the same output):
            # after-padding would be its words, so there is none.
            self._padding.append((job, end.end + (0 if end.split else self._pad_after)))
            self._collect_padding()
        else:
            self._padded.append(job)
        await self._queue_padded()
        return []

    async def step(self) -> list[Event]:
        await self._queue_padded()
        return []

    def _collect_padding(self, *, final: bool = False) -> None:
        """Segments whose after-padding has arrived get it; so does one that waited too
        long, or (`final`) every one once the stream has ended, with what there is."""
        recent = self._recent
        while self._padding and recent is not None:
            job, need = self._padding[0]
            if not final and recent.end < need and len(self._padding) <= PADDING_WAITING:
                return
            self._padding.popleft()
            after = recent.take(job.end, need) if recent.start <= job.end else None
            if after is not None and after.size:
                job = dataclasses.replace(job, samples=np.concatenate([job.samples, after]))
            self._padded.append(job)

    async def _queue_padded(self) -> None:
        while self._padded:
            await self._enqueue(self._padded.popleft(), drop=self._skip)

    def _skip(self, job: _Job) -> None:
        self._skipped.append(job)  # the newer segments win
        while len(self._skipped) > SKIPPED_KEPT:
            self._skipped.popleft()  # its files have long fallen back to the CTC text
            self.fallbacks += 1

    def annotate(self, event: Event) -> Event:
        """Not a change: the engine passes every segment-end event here just before it
        publishes it, which tells when a CaptionFinal has gone out (a refinement must not
        overtake its final)."""
        segment = getattr(event, "segment", None)
        if event.type == "caption_final" and isinstance(segment, int):
            self._last_final = max(self._last_final, segment)
            self._final_at[segment] = time.monotonic()
            self._published.set()
        return event

    def settled(self, event: Event) -> bool:
        return True  # annotate() changes nothing

    def on_stream_end(self) -> None:
        """No more segments: background() ends once the queued ones are refined."""
        # No more audio either: what waits for padding goes with what there is. At most
        # PADDING_WAITING jobs, so passing the ordered backlog here stays bounded.
        self._collect_padding(final=True)
        while self._padded:
            self._jobs.append(self._padded.popleft())
            while self.live and len(self._jobs) > self._backlog:
                self._skip(self._jobs.popleft())
        self._ended = True
        self._ready.set()
        self._published.set()

    def background(self) -> AsyncIterator[Event]:
        return self._refine_jobs()

    # ------------------------------------------------------------------ work

    async def _refine_jobs(self) -> AsyncIterator[Event]:
        while True:
            while self._skipped:
                job = self._skipped.popleft()
                self.fallbacks += 1
                await self._after_final(job.segment)
                yield self._event(job, self._ctc_outcome(job, SKIPPED))
            if not self._jobs:
                if self._ended:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            job = self._jobs.popleft()
            self._space.set()
            context, self._previous = self._join_context(job), None
            try:
                outcome = await self._generator.run(self._work, job, context,
                                                     priority=REFINE_PRIORITY,
                                                     task="refinement")
            except GenerationError as exc:
                self.fallbacks += 1
                await self._after_final(job.segment)
                yield StreamError(stream=self.stream, start=job.start / SAMPLE_RATE,
                                  end=job.end / SAMPLE_RATE,
                                  message=f"refinement of segment {job.segment} failed, the "
                                          f"CTC text stands: {exc}")
                yield self._event(job, self._ctc_outcome(job, FAILED))
                continue
            if outcome.reason == GuardReason.OK \
                    and len(job.samples) <= JOIN_CONTEXT_S * SAMPLE_RATE:
                self._previous = _Refined(end=job.end, samples=job.samples, text=outcome.text)
            await self._after_final(job.segment)
            self._count(job, outcome)
            yield self._event(job, outcome)

    def _join_context(self, job: _Job) -> _Refined | None:
        """The previous segment, when `job` is short and follows it without a pause."""
        previous = self._previous
        if previous is None or len(job.samples) >= self.options.join_short_s * SAMPLE_RATE:
            return None
        return previous if 0 <= job.start - previous.end < JOIN_GAP_S * SAMPLE_RATE else None

    async def _after_final(self, segment: int) -> None:
        while self._last_final < segment and not self._ended:
            self._published.clear()
            await self._published.wait()

    def _count(self, job: _Job, outcome: _Outcome) -> None:
        self.joined += outcome.joined
        if outcome.reason == GuardReason.OK:
            self.refined += 1
        elif outcome.reason == GuardReason.EMPTY:
            self.fallbacks += 1
        else:
            self.rejected += 1
        now = time.monotonic()
        arrived = self._arrivals.time_of(job.end)
        if arrived is not None:
            self.latency.add(now - arrived)
        shown = self._final_at.pop(job.segment, None)
        if self.live and shown is not None and now - shown > self.options.max_wait_s:
            self.late += 1  # live file sinks have written the CTC text meanwhile
        while len(self._final_at) > 4 * ORDERED_BACKLOG:  # finals of failed/skipped jobs
            self._final_at.pop(next(iter(self._final_at)))

    def _ctc_outcome(self, job: _Job, reason: str) -> _Outcome:
        closed = job.closed
        if closed is None:
            return _Outcome(text="", words=(), reason=reason, cer=None)
        return _Outcome(text=closed.text, words=closed.words, reason=reason, cer=None)

    def _decode(self, job: _Job, context: _Refined | None) -> tuple[str, bool]:
        """The segment's text, and whether it was decoded with the previous segment (when
        that decode repeats the previous text and says more: otherwise alone)."""
        if context is not None:
            whole = self.refiner.refine(np.concatenate([context.samples, job.samples]))
            rest = text_after(context.text, whole.text)
            if rest is not None:
                return rest, True
        return self.refiner.refine(job.samples).text, False

    def _work(self, job: _Job, context: _Refined | None = None) -> _Outcome:
        """On the generation thread: decode, judge, align (alignment is cheap numpy)."""
        text, joined = self._decode(job, context)
        ctc_text = job.closed.text if job.closed is not None else ""
        verdict = judge(text, ctc_text, self.options.guard)
        if joined and not verdict.accepted:
            # The joint decode may have been cut at the wrong repeat: the segment alone
            # still deserves its chance before the CTC text stands.
            text, joined = self._decode(job, None)
            verdict = judge(text, ctc_text, self.options.guard)
        if not verdict.accepted:
            outcome = self._ctc_outcome(job, str(verdict.reason))
            return _Outcome(text=outcome.text, words=outcome.words, reason=outcome.reason,
                            cer=verdict.cer, joined=joined)
        empty = np.zeros((0, 1), np.float32)
        logprobs = job.closed.logprobs if job.closed is not None else empty
        vocabulary = self.vocabulary
        if vocabulary is None:  # nothing to align to: interpolate over the segment
            vocabulary, logprobs = CtcVocabulary(ids={}, blank_id=0, delimiter_id=None,
                                                 upper=False), empty
        aligned = align_words(text, logprobs, vocabulary,
                              start_s=job.start / SAMPLE_RATE, frame_s=self.frame_s,
                              end_s=job.end / SAMPLE_RATE)
        words = tuple(Word(word=w.word, start=w.start, end=w.end) for w in aligned)
        return _Outcome(text=text.strip(), words=words, reason=str(verdict.reason),
                        cer=verdict.cer, joined=joined)

    def _event(self, job: _Job, outcome: _Outcome) -> CaptionRefined:
        return CaptionRefined(
            stream=self.stream, start=job.start / SAMPLE_RATE, end=job.end / SAMPLE_RATE,
            segment=job.segment, text=outcome.text, words=outcome.words,
            model=self.refiner.model_id, accepted=outcome.reason == GuardReason.OK,
            reason=outcome.reason, cer=outcome.cer)
