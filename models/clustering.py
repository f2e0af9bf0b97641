"""Online speaker clustering and turn aggregation (diart-style): arrays in, results out. Pure.

One diarization step hands over the local segmentation of a rolling window (`activity`,
[frames, local speakers], values in 0..1) and one embedding per local speaker. Then:

1. `OnlineClustering.identify` maps local speakers to global ones (diart's
   OnlineSpeakerClustering): a local speaker is *active* when its peak activity reaches
   `tau_active`; active speakers are matched to global centroids by cosine distance with a
   one-to-one (Hungarian) assignment, so two local speakers never share a global speaker in
   one window; a match farther than `delta_new` (or, for an enrolled voiceprint, below the
   similarity `enrolled_threshold`) is undone; an unmatched speaker whose mean activity
   reaches `rho_update` becomes a new global speaker while fewer than `max_speakers` exist,
   otherwise it takes the closest free anonymous speaker. Centroids are running sums of
   normalised embeddings, updated only from speakers with mean activity >= `rho_update`.
   Enrolled voiceprints seed named global speakers and are never updated (they are the
   reference a person was enrolled with) nor used as a fallback for an unknown voice.
2. `ActivityAggregator` averages the overlapping windows' global activities (Hamming-weighted,
   as diart's DelayedAggregation) and releases each frame once, `latency` after it was heard.
3. `TurnTracker` binarises the released frames and turns them into speaker turns.

Frames are integer positions on the caller's clock (the engine uses 20 ms frames of the
speech-only clock); embeddings may have any dimension.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

FloatArray = npt.NDArray[np.float32]

#: Overlap penalty of diart's OverlapAwareSpeakerEmbedding: frames where a speaker dominates
#: weigh most in its embedding (gamma sharpens, beta is the softmax temperature).
OVERLAP_GAMMA = 3.0
OVERLAP_BETA = 10.0
MIN_WEIGHT = 1e-8  # floor of the overlap weights (diart), so no speaker's weights are all 0
ANONYMOUS_PREFIX = "S"  # global speakers nobody enrolled are called S1, S2, ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusteringOptions:
    tau_active: float = 0.6  # peak activity (0..1) for a local speaker to count
    rho_update: float = 0.3  # mean activity (0..1) to create or update a centroid
    delta_new: float = 1.0  # cosine distance (0..2) beyond which a voice is new
    max_speakers: int = 20  # anonymous global speakers at most (enrolled ones come on top)
    enrolled_threshold: float = 0.7  # cosine similarity (-1..1) to name an enrolled person

    def __post_init__(self) -> None:
        for name in ("tau_active", "rho_update"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if not (math.isfinite(self.delta_new) and 0.0 < self.delta_new <= 2.0):
            raise ValueError(f"delta_new is a cosine distance in (0, 2], got {self.delta_new}")
        if self.max_speakers < 1:
            raise ValueError(f"max_speakers must be at least 1, got {self.max_speakers}")
        if not (math.isfinite(self.enrolled_threshold) and -1.0 <= self.enrolled_threshold <= 1.0):
            raise ValueError(
                f"enrolled_threshold is a cosine similarity in [-1, 1], got "
                f"{self.enrolled_threshold}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Voiceprint:
    """An enrolled person: a name and an embedding of the same model as the live ones."""

    name: str
    embedding: FloatArray


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """What one window's local speakers became."""

    mapping: dict[int, int]  # local speaker -> global speaker (inactive ones are absent)
    created: tuple[int, ...]  # global speakers created by this window
    distances: dict[int, float]  # local speaker -> cosine distance to its global centroid


def l2_normalize(x: npt.ArrayLike) -> FloatArray:
    """Rows scaled to unit length (rows of zeros or non-finite values become NaN)."""
    arr = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norms > 0, arr / norms, np.nan)
    return out.astype(np.float32)


def cosine_similarity(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Cosine similarity of two vectors (NaN if either is zero)."""
    na, nb = l2_normalize(a), l2_normalize(b)
    return float(np.dot(na.astype(np.float64), nb.astype(np.float64)))


def overlap_weights(activity: FloatArray, *, gamma: float = OVERLAP_GAMMA,
                    beta: float = OVERLAP_BETA) -> FloatArray:
    """Per-frame weights [frames, speakers] for each local speaker's embedding.

    diart's overlapped-speech penalty: activity**gamma times softmax(beta*activity)**gamma,
    so frames where another speaker is as loud count much less.
    """
    act = np.clip(np.asarray(activity, dtype=np.float64), 0.0, 1.0)
    if act.ndim != 2:
        raise ValueError(f"activity must be [frames, speakers], got shape {act.shape}")
    logits = beta * act
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    weights = np.power(act, gamma) * np.power(probs, gamma)
    return np.asarray(np.maximum(weights, MIN_WEIGHT), dtype=np.float32)


class OnlineClustering:
    """Global speakers of one stream, grown window by window (see the module docstring)."""

    def __init__(self, *, options: ClusteringOptions,
                 voiceprints: Sequence[Voiceprint] = ()) -> None:
        self.options = options
        self._centroids: list[np.ndarray] = []  # float64 running sums of unit vectors
        self._labels: list[str] = []
        self._enrolled: list[bool] = []
        self._anonymous = 0
        names = [v.name for v in voiceprints]
        if len(set(names)) != len(names):
            raise ValueError(f"voiceprint names must be unique, got {names}")
        for vp in voiceprints:
            unit = l2_normalize(vp.embedding)
            if not np.isfinite(unit).all():
                raise ValueError(f"voiceprint {vp.name!r} has a zero or non-finite embedding")
            self._add(unit, label=vp.name, enrolled=True)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._labels)

    @property
    def num_speakers(self) -> int:
        return len(self._labels)

    @property
    def anonymous_speakers(self) -> int:
        return self._anonymous

    def is_enrolled(self, speaker: int) -> bool:
        return self._enrolled[speaker]

    def centroid(self, speaker: int) -> FloatArray:
        return l2_normalize(self._centroids[speaker])

    def _add(self, unit: FloatArray, *, label: str | None = None, enrolled: bool = False) -> int:
        if label is None:
            self._anonymous += 1
            label = f"{ANONYMOUS_PREFIX}{self._anonymous}"
        self._centroids.append(unit.astype(np.float64).copy())
        self._labels.append(label)
        self._enrolled.append(enrolled)
        return len(self._labels) - 1

    def identify(self, activity: FloatArray, embeddings: FloatArray) -> Assignment:
        """Match one window's local speakers to global speakers, updating the centroids."""
        act = np.asarray(activity, dtype=np.float32)
        emb = np.asarray(embeddings, dtype=np.float32)
        if act.ndim != 2 or emb.ndim != 2 or act.shape[1] != emb.shape[0]:
            raise ValueError(
                f"need activity [frames, K] and embeddings [K, dim], got {act.shape} and "
                f"{emb.shape}"
            )
        opts = self.options
        if act.shape[0] == 0:
            return Assignment(mapping={}, created=(), distances={})
        units = l2_normalize(emb)
        usable = np.asarray(np.isfinite(units).all(axis=1), dtype=bool)
        peak, mean = act.max(axis=0), act.mean(axis=0)
        active = [k for k in range(act.shape[1]) if peak[k] >= opts.tau_active and usable[k]]
        long = {k for k in active if mean[k] >= opts.rho_update}
        if not active:
            return Assignment(mapping={}, created=(), distances={})

        dist = self._distances(units[active])  # [active, global]
        mapping: dict[int, int] = {}
        if dist.shape[1]:
            rows, cols = linear_sum_assignment(dist)
            for r, g in zip(rows.tolist(), cols.tolist(), strict=True):
                if dist[r, g] <= self._limit(g):
                    mapping[active[r]] = g

        created: list[int] = []
        for r, k in enumerate(active):
            if k in mapping:
                continue
            has_space = self._anonymous < opts.max_speakers
            taken = set(mapping.values())
            # An unknown voice never falls back to an enrolled person: naming a stranger
            # would be worse than leaving the voice out.
            free = [g for g in np.argsort(dist[r]).tolist()
                    if not self._enrolled[g] and g not in taken and g not in created] \
                if dist.shape[1] else []
            if has_space and (k in long or not free):
                g = self._add(units[k])
                created.append(g)
                mapping[k] = g
            elif free:
                mapping[k] = free[0]

        distances: dict[int, float] = {}
        for k, g in mapping.items():
            if g in created:
                distances[k] = 0.0
                continue
            r = active.index(k)
            distances[k] = float(dist[r, g])
            if k in long and not self._enrolled[g]:
                self._centroids[g] += units[k]
        return Assignment(mapping=mapping, created=tuple(created), distances=distances)

    def _limit(self, speaker: int) -> float:
        if self._enrolled[speaker]:
            return 1.0 - self.options.enrolled_threshold
        return self.options.delta_new

    def _distances(self, units: FloatArray) -> np.ndarray:
        if not self._centroids:
            return np.zeros((units.shape[0], 0), dtype=np.float64)
        centres = l2_normalize(np.stack(self._centroids)).astype(np.float64)
        return np.asarray(1.0 - units.astype(np.float64) @ centres.T, dtype=np.float64)

    def to_global(self, assignment: Assignment, activity: FloatArray) -> FloatArray:
        """The window's activity in global-speaker columns [frames, num_speakers]."""
        act = np.asarray(activity, dtype=np.float32)
        out = np.zeros((act.shape[0], self.num_speakers), dtype=np.float32)
        for k, g in assignment.mapping.items():
            out[:, g] = np.maximum(out[:, g], act[:, k])
        return out


@dataclass(frozen=True, slots=True)
class _Window:
    start: int
    activity: FloatArray  # [frames, speakers when added]
    weights: FloatArray  # [frames]

    @property
    def end(self) -> int:
        return self.start + int(self.activity.shape[0])


class ActivityAggregator:
    """Hamming-weighted average of overlapping windows; each frame is released once.

    Memory is bounded by the caller releasing frames: windows that end at or before the
    released frontier are forgotten, and at most `max_windows` are kept.
    """

    def __init__(self, *, max_windows: int = 256) -> None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, got {max_windows}")
        self._windows: collections.deque[_Window] = collections.deque(maxlen=max_windows)
        self._released = 0  # frames before this one were already released

    @property
    def released(self) -> int:
        return self._released

    def add(self, start: int, activity: FloatArray) -> None:
        act = np.asarray(activity, dtype=np.float32)
        if act.ndim != 2:
            raise ValueError(f"activity must be [frames, speakers], got shape {act.shape}")
        if act.shape[0]:
            weights = np.hamming(act.shape[0]).astype(np.float32) if act.shape[0] > 1 \
                else np.ones(1, dtype=np.float32)
            self._windows.append(_Window(start, act, weights))

    def release(self, until: int) -> tuple[int, FloatArray]:
        """(first frame, activity [frames, speakers]) of the frames not yet released < until.

        Frames no window covers read as silence. Speakers are the widest window's columns.
        """
        start = self._released
        if until <= start:
            return start, np.zeros((0, self._width()), dtype=np.float32)
        width = self._width()
        total = np.zeros((until - start, width), dtype=np.float64)
        weight = np.zeros(until - start, dtype=np.float64)
        for w in self._windows:
            lo, hi = max(w.start, start), min(w.end, until)
            if lo >= hi:
                continue
            seg = slice(lo - w.start, hi - w.start)
            cols = w.activity.shape[1]
            total[lo - start:hi - start, :cols] += w.activity[seg] * w.weights[seg, None]
            weight[lo - start:hi - start] += w.weights[seg]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(weight[:, None] > 0, total / np.maximum(weight[:, None], 1e-12), 0.0)
        self._released = until
        while self._windows and self._windows[0].end <= until:
            self._windows.popleft()
        return start, out.astype(np.float32)

    def _width(self) -> int:
        return max((w.activity.shape[1] for w in self._windows), default=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    """A speaker's turn in frames [start, end) and its mean activity while active."""

    speaker: int
    start: int
    end: int
    score: float


@dataclass
class _Open:
    start: int
    last_end: int  # one past the last active frame
    total: float = 0.0
    active: int = 0


class TurnTracker:
    """Binarised activity -> speaker turns.

    A speaker is active on a frame when its activity reaches `threshold`. A pause shorter
    than `merge_gap` frames stays inside the turn; turns shorter than `min_turn` frames are
    dropped. Frames must be pushed contiguously.
    """

    def __init__(self, *, threshold: float, min_turn: int = 0, merge_gap: int = 0) -> None:
        if not (0.0 <= threshold <= 1.0):
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        if min_turn < 0 or merge_gap < 0:
            raise ValueError("min_turn and merge_gap must not be negative")
        self.threshold = threshold
        self.min_turn = min_turn
        self.merge_gap = merge_gap
        self._open: dict[int, _Open] = {}
        self._next: int | None = None

    @property
    def position(self) -> int | None:
        """One past the last frame pushed."""
        return self._next

    def push(self, start: int, activity: FloatArray) -> list[Turn]:
        """Feed frames [start, start + len); returns the turns they closed, by end then start."""
        act = np.asarray(activity, dtype=np.float32)
        if self._next is not None and start != self._next:
            raise ValueError(f"frames must be contiguous: expected {self._next}, got {start}")
        closed: list[Turn] = []
        active = act >= self.threshold
        for i in range(act.shape[0]):
            f = start + i
            for g in range(act.shape[1]):
                if active[i, g]:
                    cur = self._open.get(g)
                    if cur is None:
                        cur = self._open[g] = _Open(start=f, last_end=f + 1)
                    cur.last_end = f + 1
                    cur.total += float(act[i, g])
                    cur.active += 1
            for g, cur in list(self._open.items()):
                if f + 1 - cur.last_end > self.merge_gap:
                    closed += self._close(g)
        self._next = start + int(act.shape[0])
        return closed

    def close(self) -> list[Turn]:
        """End every open turn (at a gap in the audio, or at the end of the stream)."""
        closed: list[Turn] = []
        for g in sorted(self._open):
            closed += self._close(g)
        closed.sort(key=lambda t: (t.end, t.start))
        return closed

    def open_turns(self) -> list[Turn]:
        """The turns still open, up to their last active frame (for labelling captions)."""
        return [Turn(speaker=g, start=cur.start, end=cur.last_end,
                     score=cur.total / max(cur.active, 1))
                for g, cur in sorted(self._open.items())]

    def _close(self, speaker: int) -> list[Turn]:
        cur = self._open.pop(speaker)
        if cur.last_end - cur.start < max(self.min_turn, 1):
            return []
        return [Turn(speaker=speaker, start=cur.start, end=cur.last_end,
                     score=cur.total / max(cur.active, 1))]
