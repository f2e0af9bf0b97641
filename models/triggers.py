"""Keyword triggers: per-window keyword scores in, hits out. Pure logic, no model, no asyncio.

A keyword fires when its score reaches its threshold in `patience` consecutive windows (one
hop apart on the stream clock). After a hit the keyword is disarmed: it re-arms only once its
score has dropped below the threshold (or the run was broken by a gap) AND `refractory_s` has
passed since the end of the hit window. So one spoken word, which stays inside many
overlapping windows, fires exactly once, however long the windows keep scoring it high.

Windows that are not contiguous (the VAD skipped non-speech, or a live run skipped stale
windows) break every run: patience counts only windows that follow each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from harken.models.audio import SAMPLE_RATE

WINDOW_S = 1.0  # s: Speech Commands clips, and so the models trained on them, are 1 s long


def is_background_label(label: str) -> bool:
    """`_silence_`, `_unknown_` and the like: classes that mean "no keyword"."""
    return len(label) > 2 and label.startswith("_") and label.endswith("_")


DEFAULT_THRESHOLD = 0.8  # softmax probability
DEFAULT_PATIENCE = 2  # consecutive windows
DEFAULT_REFRACTORY_S = 1.0  # s after a hit window's end before the keyword may fire again


def _check_threshold(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"keyword threshold for {name} must be above 0 and at most 1, "
                         f"got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerOptions:
    threshold: float = DEFAULT_THRESHOLD
    #: per-keyword thresholds that override `threshold`
    thresholds: Mapping[str, float] = field(default_factory=dict)
    patience: int = DEFAULT_PATIENCE
    refractory_s: float = DEFAULT_REFRACTORY_S

    def __post_init__(self) -> None:
        _check_threshold("every keyword", self.threshold)
        for keyword, value in self.thresholds.items():
            _check_threshold(repr(keyword), value)
        if self.patience < 1:
            raise ValueError(f"keyword patience must be at least 1 window, got {self.patience}")
        if not (math.isfinite(self.refractory_s) and 0.0 <= self.refractory_s <= 60.0):
            raise ValueError("keyword refractory_s must be between 0 and 60 seconds, "
                             f"got {self.refractory_s}")

    def threshold_for(self, keyword: str) -> float:
        return self.thresholds.get(keyword, self.threshold)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoredWindow:
    start: int  # stream-clock sample of the window's first sample
    end: int  # one past its last sample
    scores: Mapping[str, float]  # keyword -> probability


@dataclass(frozen=True, slots=True, kw_only=True)
class KeywordHit:
    keyword: str
    score: float  # mean score over the `patience` windows that fired
    start: int  # stream samples: the span every window of the run shares
    end: int


@dataclass(slots=True)
class _State:
    run: list[ScoredWindow] = field(default_factory=list)
    armed: bool = True
    blocked_until: int = 0  # stream sample: no hit from a window ending before this


class KeywordTrigger:
    """Trigger state of one stream. Feed windows in stream order."""

    def __init__(self, *, keywords: Sequence[str], options: TriggerOptions, hop: int) -> None:
        if not keywords:
            raise ValueError("a keyword trigger needs at least one keyword")
        if hop <= 0:
            raise ValueError(f"the window hop must be positive, got {hop} samples")
        unknown = sorted(set(options.thresholds) - set(keywords))
        if unknown:
            raise ValueError(f"thresholds given for keywords that are not spotted: {unknown}; "
                             f"spotted keywords: {', '.join(keywords)}")
        self.keywords = tuple(keywords)
        self.options = options
        self.hop = hop
        self._refractory = round(options.refractory_s * SAMPLE_RATE)
        self._states = {k: _State() for k in self.keywords}
        self._last_start: int | None = None

    def set_keywords(self, keywords: Sequence[str]) -> None:
        """Spot `keywords` from the next window on; kept keywords keep their run and
        refractory state, so switching the list never makes one fire twice for one word."""
        if not keywords:
            raise ValueError("a keyword trigger needs at least one keyword")
        self.keywords = tuple(keywords)
        self._states = {k: self._states.get(k) or _State() for k in self.keywords}

    def reset(self) -> None:
        """A gap in the windows: every run restarts (refractory times still hold)."""
        self._last_start = None
        for state in self._states.values():
            state.run.clear()
            state.armed = True

    def feed(self, window: ScoredWindow) -> list[KeywordHit]:
        if self._last_start is not None and window.start != self._last_start + self.hop:
            self.reset()
        self._last_start = window.start
        hits: list[KeywordHit] = []
        for keyword in self.keywords:
            hit = self._feed_one(keyword, self._states[keyword], window)
            if hit is not None:
                hits.append(hit)
        return hits

    def _feed_one(self, keyword: str, state: _State, window: ScoredWindow) -> KeywordHit | None:
        score = float(window.scores.get(keyword, 0.0))
        if score < self.options.threshold_for(keyword):
            state.run.clear()
            state.armed = True
            return None
        if not state.armed or window.end < state.blocked_until:
            state.run.clear()
            return None
        state.run.append(window)
        if len(state.run) < self.options.patience:
            return None
        run = state.run[-self.options.patience:]
        state.run.clear()
        state.armed = False
        state.blocked_until = window.end + self._refractory
        first, last = run[0], run[-1]
        # The word lies where all the windows of the run overlap (if they still overlap).
        start, end = (last.start, first.end) if first.end > last.start else (first.start, last.end)
        mean = sum(float(w.scores.get(keyword, 0.0)) for w in run) / len(run)
        return KeywordHit(keyword=keyword, score=mean, start=start, end=end)
