"""Status bar: run state, models and compute device, RTF, caption latency, dropped events,
MQTT state (when MQTT is on) and the output files being written."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

STATE_STYLES = {
    "loading": ("… loading model", "yellow"),
    "live": ("● live", "bold green"),
    "paused": ("‖ paused", "bold yellow"),
    "finished": ("■ input ended", "bold cyan"),
    "stopping": ("■ finishing, then quitting", "bold yellow"),
    "error": ("✖ stopped", "bold red"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusInfo:
    state: str = "loading"
    models: tuple[str, ...] = ()
    device: str = ""
    rtf: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    dropped: int = 0
    mqtt: str | None = None  # None: MQTT is off
    outputs: tuple[str, ...] = ()


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


class StatusBar(Static):
    def __init__(self, info: StatusInfo, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.info = info
        self._draw()

    def show(self, info: StatusInfo) -> None:
        if info != self.info:
            self.info = info
            self._draw()

    def _draw(self) -> None:
        i = self.info
        label, style = STATE_STYLES.get(i.state, (i.state, "bold"))
        sep = (" │ ", "dim")
        parts: list[Text] = [Text(label, style=style)]
        if i.models:
            where = f" on {i.device}" if i.device else ""
            parts.append(Text(", ".join(i.models) + where))
        parts.append(Text.assemble(("RTF ", "dim"), "–" if i.rtf is None else f"{i.rtf:.2f}"))
        parts.append(Text.assemble(("latency p50 ", "dim"), _seconds(i.latency_p50_s),
                                   (" p95 ", "dim"), _seconds(i.latency_p95_s)))
        parts.append(Text.assemble(("dropped ", "dim"),
                                   (str(i.dropped), "bold red" if i.dropped else "")))
        if i.mqtt is not None:
            parts.append(Text.assemble(("MQTT ", "dim"), i.mqtt))
        if i.outputs:
            parts.append(Text.assemble(("writing ", "dim"), ", ".join(i.outputs)))
        text = Text()
        for n, part in enumerate(parts):
            if n:
                text.append(*sep)
            text.append_text(part)
        self.update(text)
