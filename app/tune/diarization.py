"""`harken tune diarization AUDIO RTTM [AUDIO RTTM ...]`: thresholds that lower the DER.

diart's tuner, done cheaply: tau_active, rho_update and delta_new only change what happens
AFTER the two models, so the models run once per window and every Optuna trial replays
their outputs through the real engine (VAD, speakers stage, clustering, aggregation,
turns) and scores it with pyannote.metrics. The first trial is the thresholds in effect,
so the best is never worse than "before" on these files. The DER is pooled over the files
(errors / reference speech of all files together), as diart's tuner does.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harken.app.config import HarkenConfig
from harken.app.eval.speakers import der_figures, diarize_file, reference_for
from harken.app.tasks.speakers import SpeakerModels, diarization_options, load_models
from harken.app.tasks.thresholds import threshold_models, thresholds
from harken.engine.sources.file import FileSource
from harken.engine.stages.base import Stage, StageContext, StageFactory
from harken.engine.stages.speakers import Embedder, Segmenter, SpeakerStage
from harken.models.calibration import Key
from harken.models.clustering import FloatArray
from harken.models.errors import TuneError
from harken.models.geometry import FrameGeometry

TUNED: tuple[Key, ...] = ("tau_active", "rho_update", "delta_new")
#: Search ranges (diart's tuner): activities 0..1, cosine distance (0, 2].
RANGES: Mapping[Key, tuple[float, float]] = {
    "tau_active": (0.0, 1.0), "rho_update": (0.0, 1.0), "delta_new": (0.01, 2.0)}
MAX_AUDIO_S = 4 * 3600.0  # model outputs of at most this much audio are kept in memory


def _key(window: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(window, dtype=np.float32).tobytes(),
                           digest_size=16).digest()


class _Replay:
    """What both replaying models forward to the real one unchanged."""

    def __init__(self, inner: Segmenter | Embedder) -> None:
        self._base = inner

    @property
    def model_id(self) -> str:
        return self._base.model_id

    @property
    def geometry(self) -> FrameGeometry:
        return self._base.geometry

    @property
    def batchable(self) -> bool:
        return self._base.batchable


class ReplaySegmenter(_Replay):
    """A segmentation model that runs once per distinct window and replays afterwards."""

    def __init__(self, inner: Segmenter) -> None:
        super().__init__(inner)
        self._inner = inner
        self._seen: dict[bytes, np.ndarray] = {}

    @property
    def num_speakers(self) -> int:
        return self._inner.num_speakers

    @property
    def windows(self) -> int:
        """Distinct windows the model has seen."""
        return len(self._seen)

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        keys = [_key(w) for w in windows]
        todo = [i for i, k in enumerate(keys) if k not in self._seen]
        if todo:
            for i, out in zip(todo, self._inner.encode([windows[i] for i in todo]),
                              strict=True):
                self._seen[keys[i]] = out
        return [self._seen[k] for k in keys]


class ReplayEmbedder(_Replay):
    """An embedder that runs once per distinct window and replays its pooled embeddings.

    `encode` hands the stage a stand-in [feature frames, 1] array holding the window's
    number (the stage only reads its length before calling `pool`), and `pool` returns the
    embeddings pooled the first time: the weights come from the replayed segmentation, so
    they are the same on every run. The real frame features are kept only between the two
    calls, never for the whole file.
    """

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner)
        self._inner = inner
        self._index: dict[bytes, int] = {}  # window -> its number
        self._frames: dict[int, int] = {}  # window number -> feature frames
        self._pending: dict[int, np.ndarray] = {}  # features between encode and pool
        self._pooled: dict[int, FloatArray] = {}

    @property
    def tdnn_context(self) -> int:
        return self._inner.tdnn_context

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        keys = [_key(w) for w in windows]
        todo = [i for i, k in enumerate(keys) if k not in self._index]
        if todo:
            for i, features in zip(todo, self._inner.encode([windows[i] for i in todo]),
                                   strict=True):
                n = self._index.setdefault(keys[i], len(self._index))
                self._frames[n] = int(features.shape[0])
                self._pending[n] = features
        return [np.full((self._frames[n], 1), float(n))
                for n in (self._index[k] for k in keys)]

    def pool(self, features: np.ndarray, weights: np.ndarray) -> FloatArray:
        if features.shape[0] == 0:  # a window too short for the model: nothing to pool
            return np.asarray(self._inner.pool(np.zeros((0, 1)), weights), dtype=np.float32)
        n = int(features[0, 0])
        if n in self._pooled:
            return self._pooled[n]
        real = self._pending.pop(n, None)
        if real is None:
            raise RuntimeError("pool() called for a window encode() never saw")
        pooled = np.asarray(self._inner.pool(real, weights), dtype=np.float32)
        self._pooled[n] = pooled
        return pooled


@dataclass(frozen=True, slots=True, kw_only=True)
class Recording:
    audio: Path
    rttm: Path
    duration_s: float
    reference: Any  # pyannote.core.Annotation


@dataclass(frozen=True, slots=True, kw_only=True)
class TuneResult:
    before: dict[Key, float]
    after: dict[Key, float]
    der_before: float
    der_after: float
    trials: int
    files: int
    reference_speech_s: float


def pairs(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    if len(paths) < 2 or len(paths) % 2:
        raise TuneError(f"give AUDIO RTTM pairs (got {len(paths)} path(s)), e.g. "
                        "`harken tune diarization talk.wav talk.rttm`")
    return [(paths[i], paths[i + 1]) for i in range(0, len(paths), 2)]


def recordings(paths: Sequence[Path]) -> list[Recording]:
    """Each AUDIO RTTM pair, checked before any model loads."""
    out = []
    total = 0.0
    for audio, rttm in pairs(paths):
        async def duration(path: Path = audio) -> float:
            async with FileSource(path=path, stream_id="probe") as probe:
                return probe.duration_s

        seconds = asyncio.run(duration())
        total += seconds
        out.append(Recording(audio=audio, rttm=rttm, duration_s=seconds,
                             reference=reference_for(audio, rttm, duration_s=seconds)))
    if total > MAX_AUDIO_S:
        raise TuneError(f"{total / 3600:.1f} h of audio is more than tune keeps in memory "
                        f"({MAX_AUDIO_S / 3600:.0f} h); give fewer or shorter recordings")
    return out


class Replayer:
    """Runs the real engine over the recordings with the given thresholds."""

    def __init__(self, config: HarkenConfig, models: SpeakerModels,
                 recs: Sequence[Recording]) -> None:
        self.config = config
        self.models = models
        self.recordings = list(recs)
        self.segmenter = ReplaySegmenter(models.segmenter)
        self.embedder = ReplayEmbedder(models.embedder)

    def _stages(self, values: Mapping[Key, float]) -> StageFactory:
        options = diarization_options(self.config, dict(values))

        def make(ctx: StageContext) -> Stage:
            return SpeakerStage(stream=ctx.stream, segmenter=self.segmenter,
                                embedder=self.embedder, worker=ctx.worker, options=options,
                                live=False, arrivals=ctx.arrivals)

        return make

    def der(self, values: Mapping[Key, float], *, collar: float) -> float:
        """DER pooled over the recordings (errors / reference speech)."""
        from pyannote.core import Annotation, Segment

        errors = total = 0.0
        for i, rec in enumerate(self.recordings):
            collect, _ = asyncio.run(diarize_file(
                self.config, rec.audio, self.models, stream_id=f"tune{i}",
                stages=self._stages(values)))
            hyp = Annotation(uri=rec.reference.uri)
            for j, turn in enumerate(collect.turns):
                hyp[Segment(turn.start, turn.end), j] = turn.speaker
            fig = der_figures(rec.reference, hyp, duration_s=rec.duration_s, collar=collar,
                              skip_overlap=False)
            errors += fig["der"] * fig["reference_speech_s"]
            total += fig["reference_speech_s"]
        if self.segmenter.windows == 0:
            names = ", ".join(str(r.audio) for r in self.recordings)
            raise TuneError(f"no speech found in {names} (the VAD heard none); tune needs "
                            "recordings where people talk")
        return errors / total


def search(objective: Callable[[dict[Key, float]], float], start: Mapping[Key, float], *,
           trials: int, seed: int = 0,
           progress: Callable[[int, float, float], None] | None = None
           ) -> tuple[dict[Key, float], float, float]:
    """Optuna TPE over tau_active, rho_update and delta_new; the first trial is `start`,
    scored before the study begins (so bad data fails there, as one clear error).

    Returns (best values, its score, the score of `start`).
    """
    import optuna
    from optuna.distributions import BaseDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = {k: float(start[k]) for k in TUNED}
    before = objective(dict(first))
    if progress is not None:
        progress(1, before, before)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    dists: dict[str, BaseDistribution] = {k: FloatDistribution(*RANGES[k]) for k in TUNED}
    # The current values may lie outside the search ranges (a user's delta_new of 0.005):
    # clip them into the ranges for the sampler; the score stays the one measured.
    study.add_trial(optuna.trial.create_trial(
        params={k: min(max(v, RANGES[k][0]), RANGES[k][1]) for k, v in first.items()},
        distributions=dists, value=before))

    def trial_score(trial: optuna.Trial) -> float:
        values = {k: trial.suggest_float(k, *RANGES[k]) for k in TUNED}
        score = objective(values)
        if progress is not None:
            progress(trial.number + 1, score, min(score, study.best_value))
        return score

    study.optimize(trial_score, n_trials=max(0, trials - 1))
    if study.best_trial.number == 0:  # nothing beat the current values
        return first, before, before
    best = {k: float(study.best_params[k]) for k in TUNED}
    return best, float(study.best_value), before


def tune(config: HarkenConfig, paths: Sequence[Path], *, trials: int, collar: float,
         seed: int = 0, quiet: bool = False) -> TuneResult:
    if trials < 1:
        raise TuneError(f"--trials must be at least 1, got {trials}")
    recs = recordings(paths)
    models = asyncio.run(load_models(config))
    replayer = Replayer(config, models, recs)
    start = {k: r.value for k, r in thresholds(config).items() if k in TUNED}

    def progress(n: int, score: float, best: float) -> None:
        if not quiet:
            print(f"trial {n}/{trials}: DER {100 * score:.1f}% (best {100 * best:.1f}%)",
                  file=sys.stderr, flush=True)

    best, der_after, der_before = search(lambda v: replayer.der(v, collar=collar), start,
                                         trials=trials, seed=seed, progress=progress)
    speech = sum(r.reference.get_timeline().support().duration() for r in recs)
    return TuneResult(before=start, after=best, der_before=der_before, der_after=der_after,
                      trials=trials, files=len(recs), reference_speech_s=float(speech))


def calibration_values(config: HarkenConfig,
                       values: Mapping[Key, float]) -> dict[str, dict[str, float]]:
    """model id -> {key: value}: each threshold under the model whose score it reads."""
    models = threshold_models(config)
    out: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        if not math.isfinite(value):
            continue
        out.setdefault(models[key], {})[key] = value
    return out

