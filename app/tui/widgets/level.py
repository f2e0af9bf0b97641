"""Input panel: level meter in dBFS, speech/silence indicator, device name and sample rate."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widget import Widget

METER_FLOOR_DBFS = -60.0  # the empty end of the meter
LOUD_DBFS = -6.0  # above this the bar turns red (close to clipping)
QUIET_DBFS = -40.0  # below this the bar is dim (room noise)


def meter_fraction(dbfs: float) -> float:
    """0 at METER_FLOOR_DBFS (or -inf), 1 at 0 dBFS."""
    if not math.isfinite(dbfs):
        return 0.0 if dbfs < 0 else 1.0
    return min(1.0, max(0.0, (dbfs - METER_FLOOR_DBFS) / -METER_FLOOR_DBFS))


class LevelMeter(Widget):
    def __init__(self, *, device: str, sample_rate: int, id: str | None = None) -> None:
        super().__init__(id=id)
        self.device = device
        self.sample_rate = sample_rate
        self.dbfs: float | None = None
        self.speech = False
        self.paused = False
        self.border_title = "Input"

    def set_level(self, dbfs: float, *, speech: bool) -> None:
        self.dbfs = dbfs
        self.speech = speech
        self.refresh()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.refresh()

    def render(self) -> Text:
        width = max(8, self.size.width)
        bar_cells = max(4, width - 10)
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append(self.device + "\n", style="bold")
        if self.dbfs is None:
            out.append("·" * bar_cells, style="grey23")
            out.append("   – dBFS\n", style="dim")
        else:
            filled = round(meter_fraction(self.dbfs) * bar_cells)
            style = "red" if self.dbfs > LOUD_DBFS else \
                "grey50" if self.dbfs < QUIET_DBFS else "green"
            out.append("█" * filled, style=style)
            out.append("·" * (bar_cells - filled), style="grey23")
            shown = max(self.dbfs, -99.0) if math.isfinite(self.dbfs) else -99.0
            out.append(f" {shown:>4.0f} dBFS\n", style="dim")
        if self.paused:
            out.append("‖ paused", style="bold yellow")
        elif self.speech:
            out.append("● speech", style="bold green")
        else:
            out.append("○ silence", style="dim")
        out.append(f"  {self.sample_rate / 1000:g} kHz", style="dim")
        return out
