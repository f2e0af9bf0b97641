"""`harken transcribe`: files through the same engine as `harken run --input FILE --fast`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterable, Mapping, Sequence
from pathlib import Path

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from harken.app import flags
from harken.app.config import HarkenConfig
from harken.app.session import Session, check_formats, check_new, output_paths, output_sinks
from harken.app.tasks.loader import ModelLoader
from harken.app.tasks.refine import check_refine_flags, with_refine_resolved
from harken.engine.events import Event
from harken.engine.pipeline import Engine
from harken.engine.sinks.base import Sink
from harken.engine.sources.file import FileSource
from harken.models.audio import SAMPLE_RATE


class ProgressSink:
    """Advances a progress bar to the stream-clock end of each event."""

    def __init__(self, *, progress: Progress, task: TaskID, name: str = "progress") -> None:
        self.name = name
        self._progress = progress
        self._task = task

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            self._progress.update(self._task, completed=event.end)


def no_speech_note(engine: Engine, *, name: str, config: HarkenConfig) -> str | None:
    """A note when the VAD found no speech at all in an input: without it, empty output files
    look like a failure (or go unnoticed)."""
    if any(stream.segments for stream in engine.streams.values()):
        return None
    seconds = sum(stream.audio_samples for stream in engine.streams.values()) / SAMPLE_RATE
    return (f"harken: note: no speech found in {name} ({seconds:.1f} s of audio), so there is "
            "nothing to caption; if it does hold speech, lower --vad-aggressiveness (now "
            f"{config.vad.aggressiveness}) or check its recording level")


def _stem(path: Path, used: set[str]) -> str:
    stem = path.stem or "audio"
    candidate, n = stem, 1
    while candidate in used:  # two inputs named alike must not overwrite each other
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


async def transcribe_files(config: HarkenConfig, files: Sequence[Path], *, progress: bool,
                           durations: Mapping[Path, float] | None = None) -> list[Path]:
    """Transcribes each file in turn (the models load once); returns the files written.

    `durations`: each file's length from an earlier check; without it every file is opened
    here first, so that a bad file fails before any model loads."""
    if durations is None:
        found = {}
        for path in files:
            async with FileSource(path=path, stream_id="probe", realtime=False) as probe:
                found[path] = probe.duration_s
        durations = found
    models = ModelLoader()  # every model loads once, for all the files
    written: list[Path] = []
    used: set[str] = set()
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed:>6.1f}/{task.total:.1f} s"), TimeRemainingColumn(),
                  disable=not progress, transient=False) as bar:
        for path in files:
            stem = _stem(path, used)
            source = FileSource(path=path, stream_id=stem, block_s=config.audio.block_s,
                                realtime=False)
            outputs = output_sinks(config, stem=stem, formats=config.output.formats)
            sinks: list[Sink] = list(outputs)
            if progress:
                task = bar.add_task(path.name, total=durations[path])
                sinks.append(ProgressSink(progress=bar, task=task))
            session = Session(config=config, sources=[source], sinks=sinks,
                                      live=False, models=models)
            # The first Ctrl-C (or SIGTERM/SIGHUP) finishes the segment open in this file,
            # its final written, and ends the command (Stopped); a second stops at once.
            engine = await session.run_stoppable()
            if note := no_speech_note(engine, name=str(path), config=config):
                print(note, file=sys.stderr)
            written += [out for sink in outputs
                        if isinstance(out := getattr(sink, "path", None), Path)]
    return written


def run(args: argparse.Namespace) -> int:
    loaded = flags.load(args).config
    check_refine_flags(language=args.refine_language, guard=args.refine_guard, config=loaded)
    config = with_refine_resolved(loaded)
    check_formats(config, config.output.formats)  # before any model loads
    used: set[str] = set()
    for path in args.files:  # every file's outputs, before the first is transcribed
        sinks = output_sinks(config, stem=_stem(path, used), formats=config.output.formats)
        check_new(config, output_paths(sinks))
    show_progress = not args.no_progress and sys.stderr.isatty()
    written = asyncio.run(transcribe_files(config, args.files, progress=show_progress,
))
    for path in written:
        print(path)
    return 0
