"""Stable speaker colours: each speaker keeps the colour it got when it first appeared."""

from __future__ import annotations

# Distinct on dark and light backgrounds; a ninth speaker reuses the first colour.
PALETTE = (
    "#4ea1ff",  # blue
    "#ff9f43",  # orange
    "#2ecc71",  # green
    "#ff6b81",  # pink
    "#c39bff",  # violet
    "#f7d038",  # yellow
    "#1abc9c",  # teal
    "#e17055",  # brick
)
SPEECH_COLOUR = "#7f8c8d"  # the VAD's speech row, when no speaker is known


class SpeakerColours:
    """Speaker label -> colour, in order of first appearance (shared by every widget)."""

    def __init__(self, palette: tuple[str, ...] = PALETTE) -> None:
        if not palette:
            raise ValueError("the speaker palette needs at least one colour")
        self._palette = palette
        self._assigned: dict[str, str] = {}

    def colour(self, speaker: str) -> str:
        colour = self._assigned.get(speaker)
        if colour is None:
            colour = self._palette[len(self._assigned) % len(self._palette)]
            self._assigned[speaker] = colour
        return colour

    @property
    def speakers(self) -> list[str]:
        """Every speaker seen, in order of first appearance."""
        return list(self._assigned)
