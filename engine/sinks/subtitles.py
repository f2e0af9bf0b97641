"""Subtitle formatting (SRT, WebVTT): pure functions from finals to cues and text.

Cue text comes from models and from users (speaker names), so it is made safe for the file
format: control characters go, whitespace (a blank line would end a cue) is folded by
`wrap_lines`, WebVTT gets `&`, `<` and `>` as character references (so no `-->` and no tag
survives), and SRT, which has no escapes, gets `-->` as `->`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harken.engine.events import CaptionFinal

MAX_CUE_CHARS = 84  # two lines of 42, the common broadcast limit
MAX_LINE_CHARS = 42
MAX_CUE_S = 7.0  # seconds a cue stays on screen at most

# C0/C1 control characters: a NUL or an escape sequence in a subtitle file breaks players.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


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
    return [cue for cue in cues if cue.text.strip()]


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


def _clean(text: str) -> str:
    return wrap_lines(_CONTROLS.sub(" ", text))


def srt_text(text: str) -> str:
    """Cue text safe in SRT: a line with `-->` would be read as the next cue's times."""
    return _clean(text.replace("-->", "->"))


def vtt_text(text: str) -> str:
    """Cue text safe in WebVTT, where `&` and `<` start markup and `-->` may not appear."""
    return _clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def srt_block(index: int, cue: Cue) -> str:
    """One SRT cue ("" for a cue with nothing to show; the caller keeps `index` dense)."""
    text = srt_text(cue.text)
    if not text:
        return ""
    span = f"{timestamp(cue.start, sep=',')} --> {timestamp(cue.end, sep=',')}"
    return f"{index}\n{span}\n{text}\n\n"


VTT_HEADER = "WEBVTT\n\n"


def vtt_block(cue: Cue) -> str:
    text = vtt_text(cue.text)
    if not text:
        return ""
    span = f"{timestamp(cue.start, sep='.')} --> {timestamp(cue.end, sep='.')}"
    return f"{span}\n{text}\n\n"
