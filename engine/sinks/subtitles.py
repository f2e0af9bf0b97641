"""Subtitle formatting (SRT, WebVTT): pure functions from finals to cues and text."""

from __future__ import annotations

from dataclasses import dataclass

from harken.engine.events import CaptionFinal

MAX_CUE_CHARS = 84  # two lines of 42, the common broadcast limit
MAX_LINE_CHARS = 42
MAX_CUE_S = 7.0  # seconds a cue stays on screen at most


@dataclass(frozen=True, slots=True)
class Cue:
    start: float
    end: float
    text: str


def cues_from_final(final: CaptionFinal) -> list[Cue]:
    """Split one final caption into readable cues along its word timings."""
    prefix = f"{final.speaker}: " if final.speaker else ""
    if not final.words:
        text = final.text.strip()
        return [Cue(final.start, final.end, prefix + text)] if text else []
    cues: list[Cue] = []
    words: list[str] = []
    cue_start = final.words[0].start
    cue_end = cue_start
    for w in final.words:
        candidate = " ".join([*words, w.word])
        too_long = len(prefix) + len(candidate) > MAX_CUE_CHARS or w.end - cue_start > MAX_CUE_S
        if words and too_long:
            cues.append(Cue(cue_start, cue_end, prefix + " ".join(words)))
            words, cue_start = [], w.start
        words.append(w.word)
        cue_end = w.end
    cues.append(Cue(cue_start, cue_end, prefix + " ".join(words)))
    return cues


def wrap_lines(text: str, width: int = MAX_LINE_CHARS) -> str:
    """Break a cue into lines of at most `width` characters at spaces (words are never cut)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return "\n".join(lines)


def timestamp(seconds: float, *, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_block(index: int, cue: Cue) -> str:
    span = f"{timestamp(cue.start, sep=',')} --> {timestamp(cue.end, sep=',')}"
    return f"{index}\n{span}\n{wrap_lines(cue.text)}\n\n"


VTT_HEADER = "WEBVTT\n\n"


def vtt_block(cue: Cue) -> str:
    span = f"{timestamp(cue.start, sep='.')} --> {timestamp(cue.end, sep='.')}"
    return f"{span}\n{wrap_lines(cue.text)}\n\n"
