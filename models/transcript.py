"""Recognised text with word times: what a caption decode returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float  # seconds on the caller's clock (start_s + offset in the window)
    end: float


@dataclass(frozen=True)
class Transcript:
    text: str
    words: tuple[TimedWord, ...]
