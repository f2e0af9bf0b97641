"""`harken eval keywords DIR [--negatives FILE]`: keyword accuracy and false accepts.

DIR has one folder per label, Speech Commands style (`yes/*.wav`, `_unknown_/*.wav`,
`_silence_/*.wav`). Each clip is classified as one window (centred, zero-padded or cut to the
model's window), which gives the accuracy per label and a confusion matrix over the model's
labels. Folders that are not labels of the model are reported and left out.

`--negatives FILE` (repeatable) runs speech that contains no keyword through the real
streaming path (VAD, windows, triggers; `live=False`) and counts every keyword that fires:
false accepts per hour of audio.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harken.app.config import HarkenConfig
from harken.app.session import engine_options
from harken.app.tasks.keywords import keyword_options, keyword_stages
from harken.engine.events import Event, Keyword
from harken.engine.pipeline import Engine
from harken.engine.sources.file import FileSource
from harken.engine.worker import InferenceWorker
from harken.models.errors import AudioFileError, HarkenError
from harken.models.keywords import KeywordSpotter

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
BATCH = 16  # clips per forward pass
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Clip:
    path: Path
    label: str


@dataclass
class _Hits:
    name: str = "eval"
    hits: list[Keyword] = field(default_factory=list)

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            if isinstance(event, Keyword):
                self.hits.append(event)


def find_clips(folder: Path) -> list[Clip]:
    if not folder.is_dir():
        raise HarkenError(f"{folder} is not a folder; give a folder with one sub-folder per "
                          "label (Speech Commands layout: yes/*.wav, _unknown_/*.wav)")
    clips = [Clip(path=f, label=d.name) for d in sorted(folder.iterdir()) if d.is_dir()
             for f in sorted(d.iterdir()) if f.suffix.lower() in AUDIO_SUFFIXES]
    if not clips:
        raise HarkenError(f"no audio clips in the label folders of {folder}; expected "
                          "LABEL/*.wav")
    return clips


async def read_audio(path: Path) -> np.ndarray:
    """Whole file as 16 kHz mono float32, decoded like every other input."""
    async with FileSource(path=path, stream_id="eval", realtime=False) as source:
        blocks = [b.samples async for b in source.blocks()]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def fit_window(samples: np.ndarray, length: int) -> np.ndarray:
    """Centre the clip in a window of `length` samples (cut or zero-padded on both sides)."""
    if len(samples) >= length:
        start = (len(samples) - length) // 2
        return samples[start:start + length].astype(np.float32)
    out = np.zeros(length, dtype=np.float32)
    offset = (length - len(samples)) // 2
    out[offset:offset + len(samples)] = samples
    return out


def classify(spotter: KeywordSpotter, windows: Sequence[np.ndarray]) -> list[int]:
    predictions: list[int] = []
    for i in range(0, len(windows), BATCH):
        for probs in spotter.encode(windows[i:i + BATCH]):
            predictions.append(int(np.argmax(probs)))
    return predictions


def confusion(labels: Sequence[str], truth: Sequence[str],
              predicted: Sequence[str]) -> dict[str, Any]:
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    per_label = {}
    for label in labels:
        n = int(matrix[index[label]].sum())
        if n:
            per_label[label] = {"clips": n,
                                "accuracy": round(float(matrix[index[label], index[label]]) / n,
                                                  4)}
    correct = int(np.trace(matrix))
    return {"clips": len(truth), "accuracy": round(correct / max(len(truth), 1), 4),
            "per_label": per_label, "labels": list(labels), "confusion": matrix.tolist()}


async def false_accepts(spotter: KeywordSpotter, config: HarkenConfig,
                        files: Sequence[Path]) -> dict[str, Any]:
    """Keyword hits on keyword-free speech through the streaming path."""
    sink = _Hits()
    seconds = 0.0
    async with InferenceWorker(name=str(spotter.device),
                               max_batch=config.compute.max_batch) as worker:
        for i, path in enumerate(files):
            source = FileSource(path=path, stream_id=f"neg{i}", realtime=False)
            async with source as probe:
                seconds += probe.duration_s
            engine = Engine(sources=[source], worker=worker,
                            stages=[keyword_stages(config, spotter)],
                            options=engine_options(config, live=False))
            sub = engine.subscribe(sink.name)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sink.consume(sub), name="eval-hits")
                await engine.run()
    hours = seconds / SECONDS_PER_HOUR
    return {"files": [str(f) for f in files], "seconds": round(seconds, 2),
            "false_accepts": len(sink.hits),
            "false_accepts_per_hour": round(len(sink.hits) / hours, 2) if hours else None,
            "hits": [{"stream": h.stream, "keyword": h.keyword, "score": h.score,
                      "start": round(h.start, 2), "end": round(h.end, 2)} for h in sink.hits]}


async def evaluate(config: HarkenConfig, folder: Path, *, negatives: Sequence[Path] = (),
                   spotter: KeywordSpotter | None = None) -> dict[str, Any]:
    clips = find_clips(folder)
    for path in negatives:
        if not path.is_file():
            raise AudioFileError(f"negatives file {path} does not exist; give speech without "
                                 "keywords with --negatives FILE")
    if spotter is None:
        spotter = await asyncio.to_thread(
            KeywordSpotter.from_pretrained, config.keywords.model,
            device=config.compute.device_type, dtype=config.compute.dtype)
    keywords, trigger, spotting = keyword_options(config, spotter.labels,
                                                  model_id=spotter.model_id)
    known = [c for c in clips if c.label in spotter.labels]
    ignored = sorted({c.label for c in clips if c.label not in spotter.labels})
    if not known:
        raise HarkenError(f"none of the label folders of {folder} ({', '.join(ignored)}) is a "
                          f"label of {spotter.model_id!r} ({', '.join(spotter.labels)})")
    window = spotting.window_samples
    audio = [fit_window(await read_audio(c.path), window) for c in known]
    predicted = [spotter.labels[i] for i in await asyncio.to_thread(classify, spotter, audio)]
    result: dict[str, Any] = {
        "model": spotter.model_id, "folder": str(folder), "window_s": spotting.window_s,
        "ignored_folders": ignored,
        **confusion(spotter.labels, [c.label for c in known], predicted),
    }
    if negatives:
        result["negatives"] = await false_accepts(spotter, config, negatives)
        result["negatives"]["keywords"] = list(keywords)
        result["negatives"]["threshold"] = trigger.threshold
        result["negatives"]["patience"] = trigger.patience
    return result


def print_report(result: dict[str, Any], out: Any = sys.stdout) -> None:
    labels: list[str] = result["labels"]
    print(f"model {result['model']}: {result['clips']} clips, accuracy "
          f"{result['accuracy']:.1%}", file=out)
    if result["ignored_folders"]:
        print(f"left out (not labels of the model): {', '.join(result['ignored_folders'])}",
              file=out)
    for label, row in result["per_label"].items():
        print(f"  {label:<12} {row['accuracy']:6.1%}  ({row['clips']} clips)", file=out)
    width = max(6, *(len(label) for label in labels))
    print("confusion (rows: true label, columns: predicted):", file=out)
    print(" " * (width + 1) + " ".join(f"{label[:5]:>5}" for label in labels), file=out)
    for label, row in zip(labels, result["confusion"], strict=True):
        if sum(row):
            print(f"{label:<{width}} " + " ".join(f"{v:>5}" for v in row), file=out)
    neg = result.get("negatives")
    if neg:
        rate = neg["false_accepts_per_hour"]
        print(f"negatives: {neg['false_accepts']} false accepts in {neg['seconds']:.1f} s "
              f"({rate if rate is not None else '–'} per hour)", file=out)
        for hit in neg["hits"]:
            print(f"  {hit['stream']} {hit['start']:7.2f}-{hit['end']:.2f} s  {hit['keyword']} "
                  f"({hit['score']:.2f})", file=out)

