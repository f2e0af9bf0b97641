"""`harken tune speakers DIR`: the speaker-ID threshold at the equal error rate.

Every same/different pair of DIR/<speaker>/<clip> is scored by the configured speaker model
(as `harken eval speakers` does); the threshold where false accepts equal false rejects
is the one written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harken.app.config import HarkenConfig
from harken.app.eval.speakers import eer_figures, pair_scores
from harken.app.tasks.thresholds import thresholds


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakerTuneResult:
    model_id: str
    before: float  # the threshold in effect
    before_origin: str
    after: float  # the threshold at the EER
    eer: float
    far_before: float  # false accepts / rejects at the old threshold
    frr_before: float
    speakers: int
    files: int
    skipped: list[str]


def tune(config: HarkenConfig, folder: Path) -> SpeakerTuneResult:
    current = thresholds(config)["threshold"]
    pairs = pair_scores(config, folder)
    figures = eer_figures(pairs.scores, pairs.same, threshold=current.value)
    return SpeakerTuneResult(model_id=pairs.model_id, before=current.value,
                             before_origin=current.origin, after=figures["eer_threshold"],
                             eer=figures["eer"], far_before=figures["far"],
                             frr_before=figures["frr"], speakers=len(set(pairs.labels)),
                             files=len(pairs.labels), skipped=pairs.skipped)
