"""Keyword spotting on one stream: VAD segments in, keyword events out.

Windows of `window_s` (1 s) lie on a grid of `hop_s` steps on the stream clock. Only windows
that overlap a VAD segment by at least `min_speech_s` (or by the whole segment, if it is
shorter) are scored; audio outside segments counts as silence (zeros), like the zero-padded
clips of Speech Commands. A window is scored as soon as its audio has arrived, or when its
segment ends (the rest of it is then silence). All windows due at one step go to the worker
together, so they share one forward pass.

Files and `--fast` (`live=False`) score every window in order, so hits never depend on timing.
Live runs score at most `max_windows_per_step` windows per step, the newest, and count the
skipped ones; a skip breaks the trigger's runs (see models/triggers.py).

The keyword list is a `KeywordSelection` that every stream of a session shares: switching it
(the MQTT control topic) takes effect from the next window each stream scores.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from harken.engine.events import Event, Keyword, StreamError
from harken.engine.metrics import ArrivalLog, Percentiles
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.engine.worker import PRIORITY_KEYWORDS, InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import InferenceError, KeywordError
from harken.models.triggers import (
    WINDOW_S,
    KeywordTrigger,
    ScoredWindow,
    TriggerOptions,
    is_background_label,
)

DEFAULT_HOP_S = 0.2  # s between window starts
DEFAULT_MIN_SPEECH_S = 0.5  # s of a window that must lie inside a VAD segment
MAX_WINDOWS_PER_STEP = 16  # live: newest windows scored per step (one batch)
MAX_BACKLOG_S = 30.0  # s of unscored audio kept at most; older windows are skipped


@dataclass(frozen=True, slots=True, kw_only=True)
class SpottingOptions:
    window_s: float = WINDOW_S
    hop_s: float = DEFAULT_HOP_S
    min_speech_s: float = DEFAULT_MIN_SPEECH_S
    max_windows_per_step: int = MAX_WINDOWS_PER_STEP

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_s) and 0.1 <= self.window_s <= 10.0):
            raise ValueError(f"keyword window_s must be 0.1 to 10 seconds, got {self.window_s}")
        if not (math.isfinite(self.hop_s) and 0.01 <= self.hop_s <= self.window_s):
            raise ValueError(f"keyword hop_s must be 0.01 s to window_s ({self.window_s} s), "
                             f"got {self.hop_s}")
        if not (math.isfinite(self.min_speech_s) and 0.0 < self.min_speech_s <= self.window_s):
            raise ValueError("keyword min_speech_s must be above 0 and at most window_s "
                             f"({self.window_s} s), got {self.min_speech_s}")
        if self.max_windows_per_step < 1:
            raise ValueError("max_windows_per_step must be at least 1, "
                             f"got {self.max_windows_per_step}")

    @property
    def window_samples(self) -> int:
        return round(self.window_s * SAMPLE_RATE)

    @property
    def hop_samples(self) -> int:
        return round(self.hop_s * SAMPLE_RATE)

    @property
    def min_speech_samples(self) -> int:
        return round(self.min_speech_s * SAMPLE_RATE)


class Spotter(Protocol):
    """What the stage needs of a classifier (models/keywords.KeywordSpotter has it)."""

    @property
    def model_id(self) -> str: ...
    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def batchable(self) -> bool: ...

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class KeywordSelection:
    """The keywords a session spots, shared by the stages of all its streams.

    `set` replaces the list in one assignment of an immutable tuple, so a stage sees the old
    list or the new one, never a mix; streams created later start with the current one.
    """

    def __init__(self, *, labels: Sequence[str], keywords: Sequence[str],
                 model_id: str) -> None:
        unknown = [k for k in keywords if k not in labels]
        if unknown:
            raise ValueError(f"keywords {unknown} are not labels of {model_id!r}")
        if not keywords:
            raise ValueError("keyword spotting needs at least one keyword")
        self.model_id = model_id
        self.labels = tuple(labels)
        self.spottable = tuple(label for label in labels if not is_background_label(label))
        self._keywords = tuple(keywords)

    @property
    def keywords(self) -> tuple[str, ...]:
        return self._keywords

    def set(self, requested: Sequence[str]) -> tuple[str, ...]:
        """Switch to `requested` (labels of the model, any case); KeywordError names the
        valid ones if any is not, and then nothing changes."""
        choose = f"choose from {', '.join(self.spottable)}"
        if not requested:
            raise KeywordError(f"an empty keyword list would spot nothing; {choose}")
        by_lower = {label.lower(): label for label in self.spottable}
        chosen: list[str] = []
        bad: list[str] = []
        for word in requested:
            label = by_lower.get(word.strip().lower())
            if label is None:
                bad.append(word)
            elif label not in chosen:
                chosen.append(label)
        if bad:
            background = [w for w in bad if w.strip() in self.labels]
            why = (f"{background} are background classes that never fire"
                   if background == bad else f"{self.model_id!r} cannot spot {bad}")
            raise KeywordError(f"{why}; {choose}")
        self._keywords = tuple(chosen)
        return self._keywords


class KeywordStage:
    """The keyword task on one stream (a `Stage` of engine/stages/base.py)."""

    name = "keywords"

    def __init__(self, *, stream: str, spotter: Spotter, worker: InferenceWorker,
                 trigger: TriggerOptions, options: SpottingOptions, live: bool,
                 arrivals: ArrivalLog, keywords: Sequence[str] = (),
                 selection: KeywordSelection | None = None) -> None:
        """`selection`: the session's shared, switchable list; else a fixed `keywords`."""
        if selection is None:
            selection = KeywordSelection(labels=spotter.labels, keywords=keywords,
                                         model_id=spotter.model_id)
        self.stream = stream
        self.spotter = spotter
        self.options = options
        self.live = live
        self.selection = selection
        self.keywords = selection.keywords
        self.latency = Percentiles()
        self.scored = 0
        self.skipped = 0
        self.failed = 0
        self.hits = 0
        self._worker = worker
        self._arrivals = arrivals
        self._trigger = KeywordTrigger(keywords=self.keywords, options=trigger,
                                       hop=options.hop_samples)
        self._index = {k: spotter.labels.index(k) for k in self.keywords}
        self._win = options.window_samples
        self._hop = options.hop_samples
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream sample of _buf[0]; always <= the next window's start
        self._next: int | None = None  # start of the next grid window to decide on
        self._segment = -1
        self._seg_start = 0  # S: the speech region's start (kept across VAD splits)
        self._seg_end = 0  # E: end of the audio received so far (the final end once closed)
        self._open = False
        self._split_at: int | None = None  # a VAD split: the next segment continues this one

    # ------------------------------------------------------------------ Stage protocol

    def counters(self) -> dict[str, int]:
        return {"keyword_windows_scored": self.scored, "keyword_windows_skipped": self.skipped,
                "keyword_windows_failed": self.failed, "keyword_hits": self.hits}

    def latencies(self) -> dict[str, float | None]:
        return {"keyword_latency_p50_s": self.latency.get(50),
                "keyword_latency_p95_s": self.latency.get(95)}

    def background(self) -> AsyncIterator[Event] | None:
        return None

    def on_start(self, start: SegmentStart) -> None:
        self._segment = start.segment
        self._open = True
        if self._split_at is not None and start.start == self._split_at:
            self._split_at = None  # the same speech goes on
            return
        self._split_at = None
        self._seg_start = self._seg_end = start.start
        # The first grid window that overlaps the segment at all.
        first = max(0, math.ceil((start.start - self._win + 1) / self._hop) * self._hop)
        self._next = first if self._next is None else max(self._next, first)
        self._trim()

    def on_audio(self, audio: SegmentAudio) -> None:
        if not self._open or audio.segment != self._segment:
            return
        self._write(audio.start, audio.samples)
        self._seg_end = max(self._seg_end, audio.end)

    async def step(self) -> list[Event]:
        if not self._open:
            return []
        return await self._score(self._due(final=False))

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        if not self._open or end.segment != self._segment:
            return []
        if end.split:
            # The VAD cut long speech; the next segment re-sends the audio from `end.end`.
            self._split_at = end.end
            return []
        self._seg_end = end.end
        if self._next is not None and len(self._buf):
            keep = max(0, end.end - self._buf_start)
            self._buf[keep:] = 0.0  # nothing past the end is speech
        events = await self._score(self._due(final=True))
        self._open = False
        self._trigger.reset()
        return events

    # ------------------------------------------------------------------ internals

    def _write(self, pos: int, samples: np.ndarray) -> None:
        if self._next is None:
            return
        end = pos + len(samples)
        if end <= self._buf_start:
            return
        if pos < self._buf_start:
            samples = samples[self._buf_start - pos:]
            pos = self._buf_start
        need = end - self._buf_start
        if need > len(self._buf):
            grown = np.zeros(need, dtype=np.float32)
            grown[: len(self._buf)] = self._buf
            self._buf = grown
        offset = pos - self._buf_start
        self._buf[offset: offset + len(samples)] = samples
        backlog = self._buf_start + len(self._buf) - self._next
        limit = round(MAX_BACKLOG_S * SAMPLE_RATE)
        if backlog > limit:
            # Bounded memory: windows that fell this far behind are skipped, not queued.
            steps = math.ceil((backlog - limit) / self._hop)
            self._next += steps * self._hop
            self.skipped += steps
            self._trim()

    def _trim(self) -> None:
        if self._next is None:
            return
        drop = self._next - self._buf_start
        if drop <= 0:
            return
        self._buf = self._buf[drop:].copy() if drop < len(self._buf) else np.zeros(0, np.float32)
        self._buf_start = self._next

    def _due(self, *, final: bool) -> list[int]:
        """Starts of the windows to score now (deciding, and passing over, the others)."""
        if self._next is None:
            return []
        start, end, win = self._seg_start, self._seg_end, self._win
        length = end - start
        due: list[int] = []
        while True:
            w = self._next
            if final:
                need = min(self.options.min_speech_samples, length)
                if need <= 0 or w > end - need:
                    break
                overlap = min(w + win, end) - max(w, start)
            else:
                if w + win > end or length < self.options.min_speech_samples:
                    break  # not all its audio is here, or the segment may still be too short
                need = self.options.min_speech_samples
                overlap = w + win - max(w, start)
            if overlap >= need:
                due.append(w)
            self._next = w + self._hop
        if self.live and len(due) > self.options.max_windows_per_step:
            # Behind real time: the newest windows matter; the skipped gap resets the runs.
            self.skipped += len(due) - self.options.max_windows_per_step
            due = due[-self.options.max_windows_per_step:]
        return due

    def _window(self, w: int) -> np.ndarray:
        offset = w - self._buf_start
        out = np.zeros(self._win, dtype=np.float32)
        piece = self._buf[max(0, offset): offset + self._win]
        out[max(0, -offset): max(0, -offset) + len(piece)] = piece
        return out

    def _follow_selection(self) -> None:
        if self.selection.keywords != self.keywords:
            self.keywords = self.selection.keywords
            self._trigger.set_keywords(self.keywords)
            self._index = {k: self.spotter.labels.index(k) for k in self.keywords}

    async def _score(self, starts: list[int]) -> list[Event]:
        self._follow_selection()
        if not starts:
            self._trim()
            return []
        windows = [self._window(w) for w in starts]
        self._trim()
        events: list[Event] = []
        try:
            # Submitted together, the windows share one forward pass in the worker.
            probs = await asyncio.gather(
                *(self._worker.encode(self.spotter, x, priority=PRIORITY_KEYWORDS)
                  for x in windows))
        except InferenceError as exc:
            self.failed += len(starts)
            self._trigger.reset()
            return [StreamError(stream=self.stream, start=starts[0] / SAMPLE_RATE,
                                end=(starts[-1] + self._win) / SAMPLE_RATE, message=str(exc))]
        self.scored += len(starts)
        arrived = self._arrivals.time_of(min(starts[-1] + self._win, self._seg_end))
        if arrived is not None:
            self.latency.add(time.monotonic() - arrived)
        for w, p in zip(starts, probs, strict=True):
            scores = {k: float(p[i]) for k, i in self._index.items()}
            window = ScoredWindow(start=w, end=w + self._win, scores=scores)
            for hit in self._trigger.feed(window):
                self.hits += 1
                events.append(Keyword(
                    stream=self.stream, start=hit.start / SAMPLE_RATE, end=hit.end / SAMPLE_RATE,
                    keyword=hit.keyword, score=round(hit.score, 4), segment=self._segment,
                    model=self.spotter.model_id))
        return events
