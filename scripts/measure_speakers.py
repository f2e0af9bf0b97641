"""Speaker clustering and identification measured with a trained speaker encoder (dev only).

Needs `make measure-setup` (Resemblyzer, librosa; never a runtime dependency) and
../shared/audio (or HARKEN_SHARED_AUDIO). The embedder is tests/resemblyzer_embedder.py,
behind the speaker stage's Embedder protocol; the harness is tests/oracle_diarization.py.

    .venv/bin/python scripts/measure_speakers.py diarization [--trials 40] [--cache F]
    .venv/bin/python scripts/measure_speakers.py identification

diarization: online clustering vs offline agglomerative clustering with the oracle number
of speakers, on the same embeddings (DER, collar 0.25 s), with the generic default
thresholds, with thresholds tuned (Optuna, app/tune/diarization.search) on all clips, and
with thresholds tuned on the other clips only (held out).

identification: leave one speaker of librispeech_test_other out, enroll the others (two
clips each), name the remaining clips: the false-name rate is the share of the left-out
speaker's clips given a name; also how many enrolled speakers' clips got the right name.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from oracle_diarization import (
    SHARED,
    Clip,
    der,
    offline,
    online,
    read,
    shared_clips,
)
from resemblyzer_embedder import ResemblyzerEmbedder

from harken.app.tune.diarization import TUNED, search
from harken.models.calibration import GENERIC
from harken.models.clustering import ClusteringOptions, Voiceprint, name_voice


def _options(values: dict[str, float]) -> ClusteringOptions:
    return replace(ClusteringOptions(), **values)


def _report(clips: Sequence[Clip], options: ClusteringOptions,
            collar: float) -> dict[str, object]:
    rows: dict[str, object] = {}
    for clip in clips:
        turns, found = online(clip, options)
        on, off = der(clip, turns, collar=collar), der(clip, offline(clip, options), collar=collar)
        rows[clip.name] = {"online": round(on["der"], 4), "offline": round(off["der"], 4),
                           "online_confusion": round(on["confusion"], 4),
                           "offline_confusion": round(off["confusion"], 4),
                           "gap": round(on["der"] - off["der"], 4),
                           "labels": found, "speakers": len(clip.speakers)}
    return rows


def _tune(clips: Sequence[Clip], trials: int, collar: float) -> dict[str, float]:
    def score(values: dict[str, float]) -> float:
        opts = _options(values)
        return float(np.mean([der(c, online(c, opts)[0], collar=collar)["der"]
                              for c in clips]))

    start = {k: GENERIC[k] for k in TUNED}
    best, _, _ = search(score, start, trials=trials, seed=0)  # type: ignore[arg-type]
    return {k: round(v, 4) for k, v in best.items()}


def diarization(args: argparse.Namespace) -> dict[str, object]:
    if args.cache is not None and args.cache.exists():
        clips: list[Clip] = pickle.loads(args.cache.read_bytes())
    else:
        clips = shared_clips(ResemblyzerEmbedder())
        if args.cache is not None:
            args.cache.write_bytes(pickle.dumps(clips))
    default = {k: GENERIC[k] for k in TUNED}
    tuned = _tune(clips, args.trials, args.collar)
    held = {}
    for i, clip in enumerate(clips):
        values = _tune([c for j, c in enumerate(clips) if j != i], args.trials, args.collar)
        held[clip.name] = {"values": values, **_report([clip], _options(values),
                                                       args.collar)[clip.name]}  # type: ignore[dict-item]
    return {"model": "resemblyzer", "collar_s": args.collar, "trials": args.trials,
            "default": {"values": default, "clips": _report(clips, _options(default),
                                                            args.collar)},
            "tuned_on_all": {"values": tuned, "clips": _report(clips, _options(tuned),
                                                               args.collar)},
            "tuned_on_the_others": held}


def identification(args: argparse.Namespace) -> dict[str, object]:
    from pyannote.metrics.binary_classification import det_curve

    files = sorted((SHARED / "speakers" / "librispeech_test_other").glob("*/*.flac"))
    who = [f.parent.name for f in files]
    emb = ResemblyzerEmbedder().embed([read(f) for f in files])
    sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
    r, c = np.triu_indices(len(files), 1)
    same = np.array([who[i] == who[j] for i, j in zip(r, c, strict=True)])
    fpr, fnr, thr, eer = det_curve(same, sims[r, c])
    i = int(np.flatnonzero(fpr > fnr)[0])
    eer_threshold = float((thr[i - 1] + thr[i]) / 2)
    speakers = sorted(set(who))
    rows = []
    for threshold in sorted({0.7, round(eer_threshold, 4), *args.thresholds}):
        for margin in args.margins:
            false_names = unknown = right = known = 0
            for out in speakers:
                prints, tests = [], []
                for s in speakers:
                    idx = [k for k, w in enumerate(who) if w == s]
                    if s == out:
                        tests += [(k, None) for k in idx]
                    else:
                        prints.append(Voiceprint(name=s, embedding=emb[idx[:2]].mean(axis=0)))
                        tests += [(k, s) for k in idx[2:]]
                for k, truth in tests:
                    name = name_voice(emb[k], prints, threshold=threshold, margin=margin).name
                    if truth is None:
                        unknown += 1
                        false_names += name is not None
                    else:
                        known += 1
                        right += name == truth
            rows.append({"threshold": threshold, "margin": margin,
                         "false_names": false_names, "unknown_clips": unknown,
                         "named_right": right, "enrolled_clips": known})
    return {"model": "resemblyzer", "eer": round(float(eer), 4),
            "eer_threshold": round(eer_threshold, 4), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["diarization", "identification"])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--collar", type=float, default=0.25)
    parser.add_argument("--cache", type=Path, help="keep the prepared windows in this file")
    parser.add_argument("--margins", type=float, nargs="+",
                        default=[0.0, 0.02, 0.05, 0.1, 0.15, 0.2])
    parser.add_argument("--thresholds", type=float, nargs="*", default=[])
    args = parser.parse_args()
    result = diarization(args) if args.what == "diarization" else identification(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
