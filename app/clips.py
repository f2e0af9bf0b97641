"""Speech clips for enrollment, verification and evaluation: files or the mic, VAD-trimmed.

A voiceprint must describe the person, not the room: only what the VAD calls speech (the
same segmentation as live runs, engine/vad.py) is embedded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from harken.app.config import HarkenConfig
from harken.engine.sources.file import FileSource
from harken.engine.sources.mic import MicSource
from harken.engine.vad import VadOptions, clip_segments
from harken.models.audio import SAMPLE_RATE
from harken.models.errors import AudioFileError, HarkenError, NotEnoughSpeechError

MIN_SPEECH_S = 1.0  # s of VAD speech a clip needs to enroll or verify
CLIP_PRE_ROLL_S = 0.05  # s kept before and after speech in clips (live runs keep more)
CLIP_HANGOVER_S = 0.15
MAX_FILE_S = 600.0  # s: longer files are refused (they are read into memory)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au")


def clip_vad(vad: VadOptions) -> VadOptions:
    """Tight trimming: a clip's speech time must count voice, not the pauses around it."""
    return dataclasses.replace(vad, pre_roll_s=min(vad.pre_roll_s, CLIP_PRE_ROLL_S),
                               hangover_s=min(vad.hangover_s, CLIP_HANGOVER_S))


def live_vad_options(config: HarkenConfig) -> VadOptions:
    """The configured VAD as live runs use it (and `harken eval vad` scores it)."""
    v = config.vad
    return VadOptions(engine=v.engine, frame_ms=v.frame_ms, aggressiveness=v.aggressiveness,
                      pre_roll_s=v.pre_roll_s, hangover_s=v.hangover_s,
                      min_speech_s=v.min_speech_s, max_segment_s=v.max_segment_s,
                      split_search_s=v.split_search_s, speech_threshold=v.speech_threshold,
                      release_threshold=v.release_threshold)


def vad_options(config: HarkenConfig) -> VadOptions:
    """The configured VAD, trimming tightly (clip_vad)."""
    return clip_vad(live_vad_options(config))


async def _read(path: Path, block_s: float) -> np.ndarray:
    async with FileSource(path=path, stream_id="clip", block_s=block_s) as source:
        if source.duration_s > MAX_FILE_S:
            raise AudioFileError(f"{path} lasts {source.duration_s:.0f} s; speaker clips may "
                                 f"last {MAX_FILE_S:.0f} s at most: cut a shorter excerpt")
        parts = [block.samples async for block in source.blocks()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def read_audio(path: Path, *, block_s: float = 0.1) -> np.ndarray:
    """A whole file as 16 kHz mono float32 (any format and rate FileSource reads)."""
    return asyncio.run(_read(path, block_s))


async def _record(config: HarkenConfig, seconds: float) -> np.ndarray:
    device: int | str | None = config.audio.device or None
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    want = round(seconds * SAMPLE_RATE)
    parts: list[np.ndarray] = []
    got = 0
    async with MicSource(device=device, stream_id="enroll",
                         block_s=config.audio.block_s) as mic:
        async for block in mic.blocks():
            parts.append(block.samples)
            got += len(block.samples)
            if got >= want:
                break
    return np.concatenate(parts)[:want] if parts else np.zeros(0, dtype=np.float32)


def record(config: HarkenConfig, seconds: float) -> np.ndarray:
    """`seconds` of the configured microphone."""
    if not 0 < seconds <= MAX_FILE_S:
        raise HarkenError(f"--record takes 1 to {MAX_FILE_S:.0f} seconds, got {seconds}")
    return asyncio.run(_record(config, seconds))


def speech_only(samples: np.ndarray, vad: VadOptions) -> np.ndarray:
    """The VAD speech segments of a clip, concatenated (each segment cut at its end)."""
    pieces = [audio for _, audio in clip_segments(samples, vad)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def require_speech(speech: np.ndarray, *, what: str, minimum_s: float = MIN_SPEECH_S) -> None:
    seconds = len(speech) / SAMPLE_RATE
    if seconds == 0:
        raise NotEnoughSpeechError(f"{what} has no speech (the VAD heard only silence or "
                                   "noise); record the person speaking, 5 to 10 s is best")
    if seconds < minimum_s:
        raise NotEnoughSpeechError(f"{what} has only {seconds:.2f} s of speech; a voiceprint "
                                   f"needs at least {minimum_s:.0f} s (5 to 10 s is best): "
                                   "record more of the person speaking")


def session_turns(path: Path, speaker: str) -> list[tuple[float, float]]:
    """(start, end) of SPEAKER's turns in a recorded session (harken's JSONL output)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise HarkenError(f"cannot read {path}: {exc.strerror or exc}") from exc
    spans: list[tuple[float, float]] = []
    labels: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HarkenError(f"{path}:{number} is not JSON ({exc.msg}); --from takes the "
                              "JSONL file of a `--diarize` run") from exc
        if isinstance(event, dict) and event.get("type") == "speaker_turn":
            labels.add(str(event.get("speaker")))
            if event.get("speaker") == speaker:
                spans.append((float(event["start"]), float(event["end"])))
    if not spans:
        heard = ", ".join(sorted(labels)) or "none (was it run with --diarize?)"
        raise HarkenError(f"{path} has no turn of {speaker!r}; its speakers: {heard}")
    return spans


def cut(samples: np.ndarray, spans: Iterable[tuple[float, float]]) -> np.ndarray:
    """The samples inside the (start, end) second spans, concatenated."""
    pieces = [samples[max(0, round(a * SAMPLE_RATE)):max(0, round(b * SAMPLE_RATE))]
              for a, b in spans]
    pieces = [p for p in pieces if len(p)]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
