"""Online vs offline speaker clustering on the same real embeddings (dev measurement helpers).

The local segmentation is the oracle: in each 5 s window (stepped every 0.5 s, the speaker
stage's defaults) the reference speakers who talk take local slots in a random order, so
what differs between the systems compared is the clustering alone. Each active local
speaker gets an overlap-weighted embedding from an `Embedder` (the speaker stage's protocol;
tests/resemblyzer_embedder.py for a trained one). Then:

- online: models/clustering.OnlineClustering, window by window, with the given thresholds;
- offline: agglomerative clustering (average linkage, cosine) into the oracle number of
  speakers of the embeddings of local speakers who talk at least half the window (clean
  ones: fixed, so the baseline does not move with the online thresholds), then every
  active local speaker takes a cluster by a one-to-one assignment to the cluster centroids
  (pyannote's recipe);

and both go through the same aggregation and turn tracking (models/clustering.py) and are
scored by pyannote.metrics. Used by scripts/measure_speakers.py and
tests/test_speakers_real.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harken.engine.stages.speakers import Embedder
from harken.models.audio import SAMPLE_RATE
from harken.models.clustering import (
    ActivityAggregator,
    ClusteringOptions,
    OnlineClustering,
    TurnTracker,
    overlap_weights,
)

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("HARKEN_SHARED_AUDIO", ROOT.parent / "shared" / "audio"))
FRAME = 320  # 20 ms frames: the stage's clock
WINDOW = 250  # frames (5 s)
STEP = 25  # frames (0.5 s)
LATENCY = STEP
MIN_TURN = 5  # frames (0.1 s), the stage's default
MERGE_GAP = 10  # frames (0.2 s)
LOCAL_SLOTS = 3
OFFLINE_FIT_ACTIVITY = 0.5  # mean activity of the embeddings the offline clusters are fit on

Turns = list[tuple[int, int, str]]  # (start frame, end frame, label)


@dataclass(frozen=True)
class Window:
    start: int  # frame
    activity: np.ndarray  # [frames, LOCAL_SLOTS]
    embeddings: np.ndarray  # [LOCAL_SLOTS, dim]


@dataclass(frozen=True)
class Clip:
    name: str
    samples: np.ndarray
    reference: Any  # pyannote.core.Annotation
    speakers: tuple[str, ...]
    windows: tuple[Window, ...]

    @property
    def frames(self) -> int:
        return len(self.samples) // FRAME


def read(path: Path) -> np.ndarray:
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return np.asarray(mono if rate == SAMPLE_RATE else soxr.resample(mono, rate, SAMPLE_RATE),
                      dtype=np.float32)


def load_rttm(path: Path) -> Any:
    from pyannote.database.util import load_rttm as load

    return next(iter(load(str(path)).values()))


def _oracle(reference: Any, speakers: Sequence[str], frames: int) -> np.ndarray:
    act = np.zeros((frames, len(speakers)), dtype=np.float32)
    for segment, _, label in reference.itertracks(yield_label=True):
        lo = round(segment.start * SAMPLE_RATE / FRAME)
        hi = round(segment.end * SAMPLE_RATE / FRAME)
        act[lo:hi, speakers.index(label)] = 1.0
    return act


def _feature_weights(embedder: Embedder, weights: np.ndarray, n: int) -> np.ndarray:
    """The stage's mapping of 20 ms frame weights onto the embedder's feature frames."""
    geo = embedder.geometry
    j = np.arange(n, dtype=np.float64)
    centre = (j + embedder.tdnn_context / 2) * geo.frame_samples + geo.receptive_samples / 2
    index = np.clip((centre // FRAME).astype(np.int64), 0, weights.shape[0] - 1)
    return np.asarray(weights[index], dtype=np.float32)


def prepare(name: str, samples: np.ndarray, reference: Any, embedder: Embedder, *,
            seed: int = 0) -> Clip:
    """Oracle local activity and embeddings of every window of a clip."""
    speakers = tuple(sorted(reference.labels()))
    frames = len(samples) // FRAME
    truth = _oracle(reference, speakers, frames)
    rng = np.random.default_rng(seed)
    windows = []
    end = 0
    while end < frames:
        end = min(end + STEP, frames)
        start = max(0, end - WINDOW)
        part = truth[start:end]
        talk = part.sum(axis=0)
        who = [int(s) for s in np.argsort(-talk) if talk[s] > 0][:LOCAL_SLOTS]
        slots = rng.permutation(LOCAL_SLOTS)  # local slots mean nothing across windows
        act = np.zeros((end - start, LOCAL_SLOTS), dtype=np.float32)
        for s, slot in zip(who, slots, strict=False):
            act[:, slot] = part[:, s]
        feats = embedder.encode([samples[start * FRAME:end * FRAME]])[0]
        emb = embedder.pool(feats, _feature_weights(embedder, overlap_weights(act), len(feats)))
        windows.append(Window(start, act, np.asarray(emb, dtype=np.float32)))
    return Clip(name, samples, reference, speakers, tuple(windows))


def _aggregate(clip: Clip, windows: Sequence[tuple[int, np.ndarray]],
               label: Callable[[int], str], threshold: float) -> Turns:
    agg = ActivityAggregator(max_windows=WINDOW // STEP + 8)
    tracker = TurnTracker(threshold=threshold, min_turn=MIN_TURN, merge_gap=MERGE_GAP)
    turns = []
    for start, act in windows:
        agg.add(start, act)
        turns += tracker.push(*agg.release(start + act.shape[0] - LATENCY))
    turns += tracker.push(*agg.release(clip.frames))
    turns += tracker.close()
    return [(t.start, t.end, label(t.speaker)) for t in turns]


def online(clip: Clip, options: ClusteringOptions) -> tuple[Turns, int]:
    """Turns of the online clustering, and how many anonymous labels it handed out."""
    clus = OnlineClustering(options=options)
    out = []
    for w in clip.windows:
        a = clus.identify(w.activity, w.embeddings)
        out.append((w.start, clus.to_global(a, w.activity)))
    return _aggregate(clip, out, lambda g: clus.labels[g], options.tau_active), \
        clus.anonymous_labels


def offline(clip: Clip, options: ClusteringOptions) -> Turns:
    """Turns of the offline baseline with the oracle number of speakers."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.optimize import linear_sum_assignment

    n = len(clip.speakers)
    active = {(i, k) for i, w in enumerate(clip.windows) for k in range(LOCAL_SLOTS)
              if w.activity[:, k].max() >= options.tau_active
              and np.isfinite(w.embeddings[k]).all()}
    clean = sorted((i, k) for i, k in active
                   if clip.windows[i].activity[:, k].mean() >= OFFLINE_FIT_ACTIVITY)
    fit = clean if len(clean) >= n else sorted(active)
    x = np.stack([clip.windows[i].embeddings[k] for i, k in fit]).astype(np.float64)
    labels = fcluster(linkage(x, method="average", metric="cosine"), t=n, criterion="maxclust")
    centres = np.stack([x[labels == c].mean(axis=0) for c in np.unique(labels)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = []
    for i, w in enumerate(clip.windows):
        act = np.zeros((w.activity.shape[0], n), dtype=np.float32)
        ks = [k for k in range(LOCAL_SLOTS) if (i, k) in active]
        if ks:
            e = np.stack([w.embeddings[k] for k in ks]).astype(np.float64)
            rows, cols = linear_sum_assignment(1.0 - e @ centres.T)
            for r, c in zip(rows, cols, strict=True):
                act[:, c] = np.maximum(act[:, c], w.activity[:, ks[r]])
        out.append((w.start, act))
    return _aggregate(clip, out, lambda g: f"C{g}", options.tau_active)


def der(clip: Clip, turns: Turns, *, collar: float) -> dict[str, float]:
    """DER and its parts (fractions of the reference speech), pyannote.metrics."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    hyp = Annotation(uri=clip.name)
    for i, (start, end, label) in enumerate(turns):
        hyp[Segment(start * FRAME / SAMPLE_RATE, end * FRAME / SAMPLE_RATE), i] = label
    d = DiarizationErrorRate(collar=collar)(
        clip.reference, hyp, uem=Timeline([Segment(0, len(clip.samples) / SAMPLE_RATE)]),
        detailed=True)
    total = float(d["total"])
    return {"der": float(d["diarization error rate"]),
            "missed": float(d["missed detection"]) / total,
            "false_alarm": float(d["false alarm"]) / total,
            "confusion": float(d["confusion"]) / total}


def synthetic_meeting(*, seed: int = 0, gap_s: float = 0.3) -> tuple[np.ndarray, Any]:
    """librispeech_test_other's 20 utterances of 5 speakers in a random order, `gap_s`
    apart, with the turns it was made of as the reference."""
    from pyannote.core import Annotation, Segment

    files = sorted((SHARED / "speakers" / "librispeech_test_other").glob("*/*.flac"))
    order = np.random.default_rng(seed).permutation(len(files))
    ann = Annotation(uri="libri_meeting")
    parts, t = [], 0
    gap = np.zeros(round(gap_s * SAMPLE_RATE), dtype=np.float32)
    for i in order:
        x = read(files[i])
        ann[Segment(t / SAMPLE_RATE, (t + len(x)) / SAMPLE_RATE)] = files[i].parent.name
        parts += [x, gap]
        t += len(x) + len(gap)
    return np.concatenate(parts), ann


def shared_clips(embedder: Embedder, *, meeting: bool = True) -> list[Clip]:
    """The shared dev clips with RTTM, and (`meeting`) the synthetic 5-speaker meeting."""
    d = SHARED / "diarization"
    out = [prepare("sample", read(d / "pyannote_sample" / "sample.wav"),
                   load_rttm(d / "pyannote_sample" / "sample.rttm"), embedder),
           prepare("dev00", read(d / "ami_dev00" / "dev00.flac"),
                   load_rttm(d / "ami_dev00" / "dev00.rttm"), embedder)]
    if meeting:
        samples, ann = synthetic_meeting()
        out.append(prepare("libri_meeting", samples, ann, embedder))
    return out
