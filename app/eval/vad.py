"""`harken eval vad AUDIO RTTM`: how well the VAD finds the speech of a reference (docs/vad.md).

Scored with pyannote.metrics' DetectionErrorRate: miss and false alarm as fractions of the
reference speech (every speaker's turns merged), over the whole file. The hypothesis is the
span of each VAD segment as the live engine emits it (pre-roll and hangover included, since
that is the audio the models are given).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from harken.app.clips import live_vad_options
from harken.app.config import HarkenConfig
from harken.app.eval.rttm import RttmError, Turn, recording_turns
from harken.engine.audio import AudioBlock
from harken.engine.sources.file import FileSource
from harken.engine.vad import SegmentEnd, SegmentStart, SpeechScorer, VadOptions, VadSegmenter
from harken.models.audio import SAMPLE_RATE

RTTM_OVERRUN_S = 1.0  # s a reference may reach past the audio's end (rounding, padding)
SECONDS_PER_HOUR = 3600.0
BLOCK_S = 0.1  # s per block fed to the VAD, as a live capture delivers them


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VadRun:
    """The segments of one pass of the VAD over a stream."""

    spans: list[tuple[int, int]]  # (start, end) samples of each segment, splits included
    samples: int  # stream length
    cpu_s: float  # process CPU time spent inside the VAD


class _Spans:
    """Collects segment spans from the VAD's outputs, timing only the VAD itself."""

    def __init__(self, vad: VadOptions, scorer: SpeechScorer | None) -> None:
        self.segmenter = VadSegmenter(vad, scorer=scorer)
        self.starts: dict[int, int] = {}
        self.spans: list[tuple[int, int]] = []
        self.samples = 0
        self.cpu_s = 0.0

    def feed(self, block: AudioBlock | None) -> None:
        started = time.process_time()
        if block is None:
            outputs = self.segmenter.flush()
        else:
            outputs = self.segmenter.feed(block)
            self.samples = block.end
        self.cpu_s += time.process_time() - started
        for out in outputs:
            if isinstance(out, SegmentStart):
                self.starts[out.segment] = out.start
            elif isinstance(out, SegmentEnd):
                self.spans.append((self.starts.pop(out.segment), out.end))

    def result(self) -> VadRun:
        return VadRun(spans=self.spans, samples=self.samples, cpu_s=self.cpu_s)


def run_vad(blocks: Iterable[AudioBlock], vad: VadOptions, *,
            scorer: SpeechScorer | None = None) -> VadRun:
    """The VAD over `blocks` (one stream), as the live engine runs it."""
    spans = _Spans(vad, scorer)
    for block in blocks:
        spans.feed(block)
    spans.feed(None)
    return spans.result()


async def run_vad_async(blocks: AsyncIterable[AudioBlock], vad: VadOptions) -> VadRun:
    spans = _Spans(vad, None)
    async for block in blocks:
        spans.feed(block)
    spans.feed(None)
    return spans.result()


def array_blocks(samples: np.ndarray, *, block_s: float = BLOCK_S) -> list[AudioBlock]:
    """A whole clip as consecutive blocks of one stream."""
    n = round(block_s * SAMPLE_RATE)
    x = samples.astype(np.float32, copy=False)
    return [AudioBlock(stream="eval", start=i, samples=x[i:i + n]) for i in range(0, len(x), n)]


def detection_figures(run: VadRun, turns: list[Turn], *, collar: float) -> dict[str, Any]:
    """Miss, false alarm and detection error rate of `run` against the reference `turns`."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.detection import DetectionErrorRate

    duration = run.samples / SAMPLE_RATE
    if duration == 0:
        raise RttmError("the audio has no samples; give the recording the RTTM describes")
    last = max((t.end for t in turns), default=0.0)
    if last > duration + RTTM_OVERRUN_S:
        raise RttmError(f"the RTTM's turns run to {last:.1f} s but the audio lasts "
                        f"{duration:.1f} s: they are not the same recording; give the RTTM "
                        "made for this audio")
    reference = Annotation()
    for i, t in enumerate(turns):
        end = min(t.end, duration)
        if end > t.start:
            reference[Segment(t.start, end), i] = "speech"
    reference_s = float(reference.get_timeline().support().duration())
    if reference_s <= 0:
        raise RttmError("the RTTM has no speech (every turn lasts 0 s): detection error is "
                        "measured against reference speech; give an RTTM with speech turns")
    hypothesis = Annotation()
    for i, (start, end) in enumerate(run.spans):
        hypothesis[Segment(start / SAMPLE_RATE, end / SAMPLE_RATE), i] = "speech"
    metric = DetectionErrorRate(collar=collar, skip_overlap=False)
    d = metric(reference, hypothesis, uem=Timeline([Segment(0.0, duration)]), detailed=True)
    total = float(d["total"])
    lengths = [(end - start) / SAMPLE_RATE for start, end in run.spans]
    return {
        "collar_s": collar,
        "audio_s": round(duration, 3),
        "reference_speech_s": round(total, 3),
        "miss": round(float(d["miss"]) / total, 4),
        "false_alarm": round(float(d["false alarm"]) / total, 4),
        "detection_error_rate": round(float(d["detection error rate"]), 4),
        "segments": len(run.spans),
        "mean_segment_s": round(float(np.mean(lengths)), 3) if lengths else 0.0,
        "vad_cpu_s": round(run.cpu_s, 3),
        "vad_cpu_s_per_hour": round(run.cpu_s / duration * SECONDS_PER_HOUR, 1),
    }


def evaluate(audio: Path, rttm: Path, *, vad: VadOptions, collar: float) -> dict[str, Any]:
    """The VAD over a file, scored against its RTTM (read first: it fails fastest)."""
    turns = recording_turns(rttm, audio.stem)

    async def over_file() -> VadRun:
        async with FileSource(path=audio, stream_id=audio.stem, block_s=BLOCK_S) as source:
            return await run_vad_async(source.blocks(), vad)

    figures = detection_figures(asyncio.run(over_file()), turns, collar=collar)
    return {"audio": str(audio), "rttm": str(rttm), "engine": vad.engine, **figures}


def print_report(result: dict[str, Any]) -> None:
    r = result
    print(f"detection error {100 * r['detection_error_rate']:.1f}% = miss "
          f"{100 * r['miss']:.1f}% + false alarm {100 * r['false_alarm']:.1f}% "
          f"(VAD engine {r['engine']}, collar {r['collar_s']:.2f} s)")
    print(f"{r['reference_speech_s']:.1f} s of reference speech in {r['audio_s']:.1f} s of "
          f"audio; {r['segments']} segments, mean {r['mean_segment_s']:.2f} s")
    print(f"VAD CPU time {r['vad_cpu_s']:.2f} s ({r['vad_cpu_s_per_hour']:.0f} s per hour of "
          "audio)")


def run(args: argparse.Namespace, config: HarkenConfig) -> int:
    vad = live_vad_options(config)  # --engine reached the config as vad.engine
    result = evaluate(args.audio, args.rttm, vad=vad, collar=args.collar)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0
