"""Online speaker clustering and turn aggregation (diart-style): arrays in, results out. Pure.

One diarization step hands over the local segmentation of a rolling window (`activity`,
[frames, local speakers], values in 0..1) and one embedding per local speaker. Then:

1. `OnlineClustering.identify` maps local speakers to global ones (diart's
   OnlineSpeakerClustering): a local speaker is *active* when its peak activity reaches
   `tau_active`, *long* when its mean activity reaches `rho_update`. Pairs that may not
   match are masked first (an anonymous centroid farther than `delta_new`; an enrolled
   voiceprint below the similarity `enrolled_threshold` or not ahead of the second-best
   voiceprint by `enrolled_margin`), then active speakers are matched by cosine distance
   with a one-to-one (Hungarian) assignment, so two local speakers never share a global
   speaker in one window. An unmatched *long* speaker founds a new global speaker while
   fewer than `max_speakers` anonymous ones are alive; an unmatched short one (or a long
   one when all are in use) takes the closest anonymous speaker not heard in the window,
   and never founds one. Centroids are running sums of unit embeddings, updated only from
   long speakers. Enrolled voiceprints seed named global speakers and are never updated
   (they are the reference a person was enrolled with) nor a fallback for an unknown voice.
   Long meetings: two anonymous centroids that drift within `delta_new` of each other
   merge (the older label stays), unless they were ever heard in the same window; an
   anonymous speaker unheard for `retire_after` windows is retired. Labels are never
   reused; the freed column is, `reuse_after` windows later.
2. `ActivityAggregator` averages the overlapping windows' global activities (Hamming-weighted,
   as diart's DelayedAggregation) and releases each frame once, `latency` after it was heard.
3. `TurnTracker` binarises the released frames and turns them into speaker turns.

Frames are integer positions on the caller's clock (the engine uses 20 ms frames of the
speech-only clock); embeddings may have any dimension. `name_voice` identifies one
embedding among enrolled voices with the same threshold-and-margin rule.
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
MASKED_COST = 1e6  # assignment cost of a forbidden pair: above any sum of real distances
#: Default clock of the long-meeting rule, in analysed windows (the engine steps 0.5 s):
RETIRE_AFTER_WINDOWS = 3600  # 30 min of speech without hearing a voice retires it
REUSE_AFTER_WINDOWS = 64  # a freed column waits past any window still being averaged


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusteringOptions:
    tau_active: float = 0.6  # peak activity (0..1) for a local speaker to count
    rho_update: float = 0.3  # mean activity (0..1) to found or update a centroid
    delta_new: float = 1.0  # cosine distance (0..2) beyond which a voice is new
    max_speakers: int = 20  # live anonymous global speakers at most (enrolled ones on top)
    enrolled_threshold: float = 0.7  # cosine similarity (-1..1) to name an enrolled person
    enrolled_margin: float = 0.0  # similarity over the second-best enrolled voice, to name
    retire_after: int = RETIRE_AFTER_WINDOWS  # windows an anonymous voice may go unheard
    reuse_after: int = REUSE_AFTER_WINDOWS  # windows before a freed slot takes a new voice

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
        if not (math.isfinite(self.enrolled_margin) and 0.0 <= self.enrolled_margin <= 2.0):
            raise ValueError(f"enrolled_margin is a similarity difference in [0, 2], got "
                             f"{self.enrolled_margin}")
        if self.retire_after < 1 or self.reuse_after < 1:
            raise ValueError(f"retire_after ({self.retire_after}) and reuse_after "
                             f"({self.reuse_after}) must be at least 1 window")


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
    merged: tuple[tuple[int, int], ...] = ()  # (absorbed, kept) global speakers this window
    retired: tuple[int, ...] = ()  # anonymous global speakers retired this window


@dataclass(frozen=True, slots=True, kw_only=True)
class Identification:
    """Who one voice is among the enrolled, by `name_voice`."""

    name: str | None  # None: unknown (below the threshold, or too close to a second voice)
    best: str | None  # the nearest enrolled voice, whatever its score
    score: float  # cosine similarity to `best` (NaN when nobody is enrolled)
    margin: float  # `score` minus the second-best similarity (inf with one voice enrolled)


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


def nameable(similarities: npt.ArrayLike, *, threshold: float, margin: float) -> np.ndarray:
    """Which enrolled voices a voice may be named as: [voices] bool.

    A name needs the similarity to reach `threshold` AND to beat every other enrolled voice
    by `margin`: a voice that sits between two enrolled people is nobody's, since naming
    the wrong person is worse than saying "unknown".
    """
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.shape[-1] == 0:
        return np.zeros(sims.shape, dtype=bool)
    if sims.shape[-1] == 1:
        runner_up = np.full(sims.shape, -np.inf)
    else:
        top2 = np.sort(sims, axis=-1)[..., -2:]
        best, second = top2[..., -1:], top2[..., -2:-1]
        # Each voice's strongest rival: the best other voice (the second best for the best).
        runner_up = np.where(sims >= best, second, best)
    with np.errstate(invalid="ignore"):
        return np.asarray((sims >= threshold) & (sims - runner_up >= margin), dtype=bool)


def name_voice(embedding: npt.ArrayLike, voiceprints: Sequence[Voiceprint], *,
               threshold: float, margin: float) -> Identification:
    """Speaker identification of one embedding against the enrolled voices."""
    if not voiceprints:
        return Identification(name=None, best=None, score=math.nan, margin=math.inf)
    unit = l2_normalize(embedding).astype(np.float64)
    refs = l2_normalize(np.stack([v.embedding for v in voiceprints])).astype(np.float64)
    sims = refs @ unit
    order = np.argsort(-sims)
    best = int(order[0])
    lead = float(sims[best] - sims[order[1]]) if len(order) > 1 else math.inf
    ok = nameable(sims, threshold=threshold, margin=margin)
    return Identification(name=voiceprints[best].name if ok[best] else None,
                          best=voiceprints[best].name, score=float(sims[best]), margin=lead)


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


@dataclass
class _Slot:
    """One global speaker column: a voice, or a freed slot waiting to be reused."""

    label: str
    total: np.ndarray  # float64 running sum of unit vectors (its direction is the centroid)
    enrolled: bool
    born: int  # order of creation (the number of its S label; 0 for enrolled voices)
    heard: int  # the window that last mapped a voice here (or freed the slot)
    live: bool = True


class OnlineClustering:
    """Global speakers of one stream, grown window by window (see the module docstring)."""

    def __init__(self, *, options: ClusteringOptions,
                 voiceprints: Sequence[Voiceprint] = ()) -> None:
        self.options = options
        self._slots: list[_Slot] = []
        self._apart: set[tuple[int, int]] = set()  # slots heard in one window: never merged
        self._window = 0  # windows identified so far: the clock for retiring and reuse
        self._named = 0  # anonymous labels handed out (S1, S2, ...; never given twice)
        names = [v.name for v in voiceprints]
        if len(set(names)) != len(names):
            raise ValueError(f"voiceprint names must be unique, got {names}")
        for vp in voiceprints:
            unit = l2_normalize(vp.embedding)
            if not np.isfinite(unit).all():
                raise ValueError(f"voiceprint {vp.name!r} has a zero or non-finite embedding")
            self._slots.append(_Slot(label=vp.name, total=unit.astype(np.float64),
                                     enrolled=True, born=0, heard=0))

    @property
    def labels(self) -> tuple[str, ...]:
        """Label per global speaker column (a freed column keeps its last label)."""
        return tuple(s.label for s in self._slots)

    @property
    def num_speakers(self) -> int:
        """Global speaker columns, freed ones included."""
        return len(self._slots)

    @property
    def anonymous_speakers(self) -> int:
        """Anonymous speakers alive now (merged and retired ones not counted)."""
        return sum(1 for s in self._slots if s.live and not s.enrolled)

    @property
    def anonymous_labels(self) -> int:
        """Anonymous labels handed out so far."""
        return self._named

    def is_enrolled(self, speaker: int) -> bool:
        return self._slots[speaker].enrolled

    def is_live(self, speaker: int) -> bool:
        return self._slots[speaker].live

    def centroid(self, speaker: int) -> FloatArray:
        return l2_normalize(self._slots[speaker].total)

    def skip(self, windows: int) -> None:
        """Advance the clock over windows that were not analysed (a live run behind)."""
        self._window += max(0, windows)

    def _found(self, unit: FloatArray) -> int:
        """A new anonymous speaker, in a long-freed slot if there is one."""
        self._named += 1
        slot = _Slot(label=f"{ANONYMOUS_PREFIX}{self._named}", total=unit.astype(np.float64),
                     enrolled=False, born=self._named, heard=self._window)
        quiet = [g for g, s in enumerate(self._slots)
                 if not s.live and self._window - s.heard >= self.options.reuse_after]
        if quiet:
            g = quiet[0]
            self._slots[g] = slot
            self._apart = {p for p in self._apart if g not in p}
            return g
        self._slots.append(slot)
        return len(self._slots) - 1

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
        self._window += 1
        retired = self._retire()
        if act.shape[0] == 0:
            return Assignment(mapping={}, created=(), distances={}, retired=retired)
        units = l2_normalize(emb)
        usable = np.asarray(np.isfinite(units).all(axis=1), dtype=bool)
        peak, mean = act.max(axis=0), act.mean(axis=0)
        active = [k for k in range(act.shape[1]) if peak[k] >= opts.tau_active and usable[k]]
        long = {k for k in active if mean[k] >= opts.rho_update}
        if not active:
            return Assignment(mapping={}, created=(), distances={}, retired=retired)

        dist = self._distances(units[active])  # [active, global]
        valid = self._valid(dist)
        mapping: dict[int, int] = {}
        if dist.shape[1]:
            # Pairs that may not match are masked BEFORE the one-to-one assignment (as
            # diart does): undoing them afterwards can trade a valid match away.
            cost = np.where(valid, dist, MASKED_COST)
            rows, cols = linear_sum_assignment(cost)
            for r, g in zip(rows.tolist(), cols.tolist(), strict=True):
                if valid[r, g]:
                    mapping[active[r]] = g

        created: list[int] = []
        for r, k in enumerate(active):
            if k in mapping:
                continue
            taken = set(mapping.values())
            if k in long and self.anonymous_speakers < opts.max_speakers:
                g = self._found(units[k])
                created.append(g)
                mapping[k] = g
                continue
            # A short voice never founds a speaker (a cough or a 100 ms "yes" would stay
            # forever); like a long one when every slot is in use, it takes the closest
            # anonymous speaker not heard in this window. Never an enrolled name: naming a
            # stranger would be worse than leaving the voice out.
            free = [g for g in np.argsort(dist[r]).tolist()
                    if self._slots[g].live and not self._slots[g].enrolled
                    and g not in taken] if dist.shape[1] else []
            if free:
                mapping[k] = free[0]

        distances: dict[int, float] = {}
        updated: list[int] = []
        for k, g in mapping.items():
            slot = self._slots[g]
            slot.heard = self._window
            if g in created:
                distances[k] = 0.0
                continue
            distances[k] = float(dist[active.index(k), g])
            if k in long and not slot.enrolled:
                slot.total += units[k]
                updated.append(g)
        heard = sorted(set(mapping.values()))
        self._apart.update((a, b) for i, a in enumerate(heard) for b in heard[i + 1:])
        merged = self._merge(updated)
        if merged:
            into = dict(merged)
            mapping = {k: into.get(g, g) for k, g in mapping.items()}
        return Assignment(mapping=mapping, created=tuple(created), distances=distances,
                          merged=tuple(merged), retired=retired)

    def _valid(self, dist: np.ndarray) -> np.ndarray:
        """Which (local, global) pairs may match: [active, global] bool."""
        valid = np.zeros(dist.shape, dtype=bool)
        live = np.array([s.live for s in self._slots], dtype=bool)
        enrolled = np.array([s.enrolled for s in self._slots], dtype=bool)
        anonymous = live & ~enrolled
        valid[:, anonymous] = dist[:, anonymous] <= self.options.delta_new
        if enrolled.any():
            valid[:, enrolled] = nameable(1.0 - dist[:, enrolled],
                                          threshold=self.options.enrolled_threshold,
                                          margin=self.options.enrolled_margin)
        return valid

    def _merge(self, updated: Sequence[int]) -> list[tuple[int, int]]:
        """Anonymous centroids that drifted within delta_new of each other become one.

        The younger speaker is absorbed by the older one (its sum is added, its label freed).
        Speakers heard in one window are different people whatever their embeddings say,
        so they never merge.
        """
        merged: list[tuple[int, int]] = []
        todo = list(updated)
        while todo:
            g = todo.pop()
            if not self._slots[g].live:
                continue
            near = [h for h, s in enumerate(self._slots)
                    if h != g and s.live and not s.enrolled
                    and (min(g, h), max(g, h)) not in self._apart
                    and 1.0 - float(self.centroid(g).astype(np.float64)
                                    @ self.centroid(h).astype(np.float64))
                    <= self.options.delta_new]
            if not near:
                continue
            h = near[0]
            keep, lose = (g, h) if self._slots[g].born <= self._slots[h].born else (h, g)
            self._slots[keep].total += self._slots[lose].total
            self._slots[keep].heard = max(self._slots[keep].heard, self._slots[lose].heard)
            self._slots[lose].live = False
            self._slots[lose].heard = self._window
            # The kept speaker inherits who it was heard with.
            self._apart |= {(min(keep, o), max(keep, o)) for p in self._apart if lose in p
                            for o in p if o not in (lose, keep)}
            merged = [(a, keep if b == lose else b) for a, b in merged]
            merged.append((lose, keep))
            todo.append(keep)
        return merged

    def _retire(self) -> tuple[int, ...]:
        """Anonymous speakers unheard for `retire_after` windows lose their label."""
        out = []
        for g, s in enumerate(self._slots):
            if s.live and not s.enrolled and self._window - s.heard > self.options.retire_after:
                s.live = False
                out.append(g)
        return tuple(out)

    def _distances(self, units: FloatArray) -> np.ndarray:
        if not self._slots:
            return np.zeros((units.shape[0], 0), dtype=np.float64)
        centres = l2_normalize(np.stack([s.total for s in self._slots])).astype(np.float64)
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
