"""`harken eval diarization AUDIO RTTM` and `harken eval speakers DIR` (docs/speakers.md).

Both measure with public tooling, not hand-written scorers: DER and its parts come from
pyannote.metrics' DiarizationErrorRate, the equal error rate from its det_curve.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harken.app.clips import (
    MIN_SPEECH_S,
    audio_files,
    read_audio,
    require_speech,
    speech_only,
    vad_options,
)
from harken.app.config import HarkenConfig
from harken.app.session import engine_options
from harken.app.tasks.speakers import (
    SpeakerModels,
    load_embedder,
    load_models,
    speaker_stages,
)
from harken.app.tasks.thresholds import thresholds
from harken.engine.events import Event, SpeakerTurn, StreamError
from harken.engine.pipeline import Engine
from harken.engine.sinks.base import Sink
from harken.engine.sinks.rttm import RttmSink
from harken.engine.sources.file import FileSource
from harken.engine.stages.base import StageFactory
from harken.engine.worker import InferenceWorker
from harken.models.errors import EvalError, NotEnoughSpeechError


class TurnCollector:
    """Keeps every speaker turn (and error message) of a run."""

    name = "turns"

    def __init__(self) -> None:
        self.turns: list[SpeakerTurn] = []
        self.errors: list[str] = []

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            if isinstance(event, SpeakerTurn):
                self.turns.append(event)
            elif isinstance(event, StreamError):
                self.errors.append(event.message)


async def diarize_file(config: HarkenConfig, path: Path, models: SpeakerModels, *,
                       stream_id: str, realtime: bool = False, use_store: bool = False,
                       sinks: Sequence[Sink] = (),
                       stages: StageFactory | None = None) -> tuple[TurnCollector, Engine]:
    """The speakers stage alone over one file, through the real engine (`stages`: another
    speakers stage factory, e.g. `harken tune`'s replaying one)."""
    collect = TurnCollector()
    source = FileSource(path=path, stream_id=stream_id, block_s=config.audio.block_s,
                        realtime=realtime)
    if stages is None:
        stages = speaker_stages(config, models, use_store=use_store)
    async with InferenceWorker(name=str(models.embedder.device),
                               max_batch=config.compute.max_batch) as worker:
        engine = Engine(sources=[source], worker=worker, stages=[stages],
                        options=engine_options(config, live=realtime))
        subs = [(sink, engine.subscribe(sink.name)) for sink in (collect, *sinks)]
        async with asyncio.TaskGroup() as tg:
            for sink, sub in subs:
                tg.create_task(sink.consume(sub), name=f"sink-{sink.name}")
            await engine.run()
    return collect, engine


#: How far past the audio's end a reference turn may run (rounding in RTTM tools).
RTTM_END_TOLERANCE_S = 0.5


def _reference(rttm: Path, stem: str) -> Any:
    from pyannote.database.util import load_rttm

    try:
        found = load_rttm(str(rttm))  # type: ignore[no-untyped-call]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # pandas' too
        reason = " ".join(str(exc).split())[:120]  # one line, whatever pandas said
        raise EvalError(f"cannot read the reference {rttm} ({type(exc).__name__}: {reason}); "
                        "give an RTTM file: SPEAKER uri 1 start duration <NA> <NA> speaker "
                        "<NA> <NA>") from exc
    if not found:
        raise EvalError(f"{rttm} has no SPEAKER lines; give an RTTM file: SPEAKER uri 1 "
                        "start duration <NA> <NA> speaker <NA> <NA>")
    if stem in found:
        return found[stem]
    if len(found) == 1:
        return next(iter(found.values()))
    raise EvalError(f"{rttm} describes {', '.join(sorted(found))}, none named {stem!r} like "
                    "the audio file; rename the file or pass an RTTM of that one recording")


def reference_for(audio: Path, rttm: Path, *, duration_s: float) -> Any:
    """The RTTM's annotation of `audio`, checked against the audio's length."""
    reference = _reference(rttm, audio.stem or "audio")
    end = max((seg.end for seg in reference.get_timeline()), default=0.0)
    if end > duration_s + RTTM_END_TOLERANCE_S:
        raise EvalError(f"{rttm} has speech until {end:.1f} s but {audio} lasts "
                        f"{duration_s:.1f} s; pair each audio file with its own RTTM")
    if reference.get_timeline().duration() <= 0:
        raise EvalError(f"{rttm} has no speech (every turn is empty); give an RTTM with the "
                        "recording's speaker turns")
    return reference


def der_figures(reference: Any, hypothesis: Any, *, duration_s: float, collar: float,
                skip_overlap: bool) -> dict[str, float]:
    """DER and its parts (fractions of the reference speech) by pyannote.metrics."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=collar, skip_overlap=skip_overlap)
    uem = Timeline([Segment(0.0, duration_s)])
    d = metric(reference, hypothesis, uem=uem, detailed=True)
    total = float(d["total"])
    if total <= 0:
        raise EvalError("the reference has no speech inside the audio; check the RTTM's times")
    return {"der": float(d["diarization error rate"]),
            "missed": float(d["missed detection"]) / total,
            "false_alarm": float(d["false alarm"]) / total,
            "confusion": float(d["confusion"]) / total,
            "reference_speech_s": total}


def eval_diarization(args: argparse.Namespace, config: HarkenConfig) -> int:
    from pyannote.core import Annotation, Segment

    stem = args.audio.stem or "audio"

    async def duration() -> float:  # opening checks the file before any model loads
        async with FileSource(path=args.audio, stream_id=stem) as probe:
            return probe.duration_s

    duration_s = asyncio.run(duration())
    reference = reference_for(args.audio, args.rttm, duration_s=duration_s)
    models = asyncio.run(load_models(config))
    sinks: list[Sink] = [RttmSink(path=args.out_rttm, uri=reference.uri)] \
        if args.out_rttm is not None else []
    collect, _ = asyncio.run(diarize_file(config, args.audio, models, stream_id=stem,
                                          sinks=sinks))
    for message in collect.errors:
        print(f"harken: {message}", file=sys.stderr)
    hypothesis = Annotation(uri=reference.uri)
    for i, turn in enumerate(collect.turns):
        hypothesis[Segment(turn.start, turn.end), i] = turn.speaker
    figures = der_figures(reference, hypothesis, duration_s=duration_s, collar=args.collar,
                          skip_overlap=args.skip_overlap)
    result = {
        **{k: round(v, 4) for k, v in figures.items()},
        "collar_s": args.collar, "skip_overlap": args.skip_overlap,
        "audio_s": round(duration_s, 2), "turns": len(collect.turns),
        "speakers_hypothesis": len(hypothesis.labels()),
        "speakers_reference": len(reference.labels()),
        "speaker_model": models.embedder.model_id,
        "diarization_model": models.segmenter.model_id,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"DER {100 * figures['der']:.1f}% = missed {100 * figures['missed']:.1f}% "
          f"+ false alarm {100 * figures['false_alarm']:.1f}% "
          f"+ confusion {100 * figures['confusion']:.1f}%")
    overlap = "excluded" if args.skip_overlap else "scored"
    print(f"collar {args.collar:.2f} s (pyannote: +-{args.collar / 2:.3f} s around each reference "
          f"boundary not scored), overlapped speech {overlap}; "
          f"{figures['reference_speech_s']:.1f} s of reference speech in {duration_s:.1f} s")
    print(f"speakers: {result['speakers_hypothesis']} found, {result['speakers_reference']} in "
          f"the reference; {len(collect.turns)} turns")
    print(f"models: {models.segmenter.model_id} + {models.embedder.model_id}")
    return 0


def eer_figures(scores: np.ndarray, same: np.ndarray, *, threshold: float) -> dict[str, float]:
    """EER and its threshold (pyannote.metrics det_curve), and FAR/FRR at `threshold`."""
    from pyannote.metrics.binary_classification import det_curve

    fpr, fnr, thresholds, eer = det_curve(same, scores)
    i = int(np.flatnonzero(fpr > fnr)[0])
    lo = thresholds[i - 1] if i > 0 and np.isfinite(thresholds[i - 1]) else thresholds[i]
    return {"eer": float(eer), "eer_threshold": float((lo + thresholds[i]) / 2),
            "threshold": threshold,
            "far": float(np.mean(scores[~same] >= threshold)),
            "frr": float(np.mean(scores[same] < threshold))}


@dataclass(frozen=True, slots=True, kw_only=True)
class PairScores:
    """Cosine similarity of every pair of clips of a DIR/<speaker>/<clip> folder."""

    scores: np.ndarray  # [pairs]
    same: np.ndarray  # [pairs] bool: both clips of one speaker
    labels: list[str]  # speaker per clip used
    embeddings: np.ndarray  # [clips, dim] unit vectors
    skipped: list[str]  # why clips were left out
    model_id: str


def pair_scores(config: HarkenConfig, folder: Path) -> PairScores:
    """Every same/different pair of a folder's clips, scored by the configured model."""
    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder; give a folder with one subfolder of audio "
                        "files per speaker")
    groups = {d.name: audio_files(d) for d in sorted(folder.iterdir()) if d.is_dir()}
    groups = {name: files for name, files in groups.items() if files}
    if len(groups) < 2 or not any(len(f) >= 2 for f in groups.values()):
        raise EvalError(f"{folder} needs at least two speaker subfolders with audio files, one "
                        "of them with two files or more (for same-speaker pairs)")
    vad = vad_options(config)
    labels: list[str] = []
    speech: list[np.ndarray] = []
    skipped: list[str] = []
    for name, files in groups.items():
        for path in files:
            clip = speech_only(read_audio(path), vad)
            try:
                require_speech(clip, what=str(path), minimum_s=MIN_SPEECH_S)
            except NotEnoughSpeechError as exc:
                skipped.append(str(exc))
                continue
            labels.append(name)
            speech.append(clip)
    if not speech:
        raise EvalError(f"no clip in {folder} has {MIN_SPEECH_S:.0f} s of speech; give "
                        "recordings where people talk")
    embedder = load_embedder(config)
    vectors = embedder.embed(speech)
    sims = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    rows, cols = np.triu_indices(len(labels), k=1)
    same = np.array([labels[i] == labels[j] for i, j in zip(rows, cols, strict=True)],
                    dtype=bool)
    if same.all() or not same.any():
        raise EvalError("need both same-speaker and different-speaker pairs; add files")
    return PairScores(scores=sims[rows, cols], same=same, labels=labels, embeddings=vectors,
                      skipped=skipped, model_id=embedder.model_id)


def eval_speakers(args: argparse.Namespace, config: HarkenConfig) -> int:
    pairs = pair_scores(config, args.dir)
    scores, same, labels, skipped = pairs.scores, pairs.same, pairs.labels, pairs.skipped
    threshold = thresholds(config)["threshold"].value
    figures = eer_figures(scores, same, threshold=threshold)
    result = {**{k: round(v, 4) for k, v in figures.items()},
              "speakers": len(set(labels)), "files": len(labels),
              "same_pairs": int(same.sum()), "different_pairs": int((~same).sum()),
              "skipped_files": len(skipped), "model": pairs.model_id}
    for note in skipped:
        print(f"harken: skipped: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"EER {100 * figures['eer']:.1f}% at threshold {figures['eer_threshold']:.4f} "
          f"(cosine similarity)")
    print(f"{result['speakers']} speakers, {result['files']} files: {result['same_pairs']} "
          f"same-speaker and {result['different_pairs']} different-speaker pairs")
    print(f"at the configured threshold {figures['threshold']:.4f}: false accepts "
          f"{100 * figures['far']:.1f}%, false rejects {100 * figures['frr']:.1f}%")
    print(f"model: {pairs.model_id}")
    return 0


ACTIONS = {"diarization": eval_diarization, "speakers": eval_speakers}

