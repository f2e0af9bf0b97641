"""The speakers task built from the configuration (used by app/session.py and the commands).

Loads the two models (once per process and configuration: `harken transcribe` runs one
session per file), reads the enrolled voiceprints of the configured speaker model from the
store, and makes one SpeakerStage per stream.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from harken.app.config import HarkenConfig
from harken.app.tasks.thresholds import model_key, speaker_model_id, thresholds
from harken.app.voiceprints import VoiceprintStore
from harken.engine.stages.base import Stage, StageContext, StageFactory
from harken.engine.stages.speakers import DiarizationOptions, DiarizationSwitch, SpeakerStage
from harken.models.calibration import Key
from harken.models.clustering import ClusteringOptions, Voiceprint
from harken.models.diarization import FrameSegmenter
from harken.models.speakers import XVectorEmbedder


@dataclass(frozen=True, slots=True)
class SpeakerModels:
    segmenter: FrameSegmenter
    embedder: XVectorEmbedder


#: (speaker model, diarization model, device type, dtype, precision) -> models. Tests may
#: inject fakes.
SpeakerModelsLoader = Callable[[str, str, str, str, str], SpeakerModels]


@functools.lru_cache(maxsize=2)
def load_speaker_models(speaker_model: str, diarization_model: str, device_type: str,
                        dtype: str, precision: str = "auto") -> SpeakerModels:
    embedder = XVectorEmbedder.from_pretrained(speaker_model, device=device_type, dtype=dtype,
                                               precision=precision)
    segmenter = FrameSegmenter.from_pretrained(diarization_model, device=device_type,
                                               dtype=dtype, precision=precision)
    return SpeakerModels(segmenter=segmenter, embedder=embedder)


def load_embedder(config: HarkenConfig) -> XVectorEmbedder:
    c = config
    return XVectorEmbedder.from_pretrained(speaker_model_id(c), device=c.compute.device_type,
                                           dtype=c.compute.dtype,
                                           precision=c.compute.precision)


async def load_models(config: HarkenConfig,
                      loader: SpeakerModelsLoader = load_speaker_models) -> SpeakerModels:
    c = config
    return await asyncio.to_thread(loader, speaker_model_id(c),
                                   model_key(c.speakers.diarization_model),
                                   c.compute.device_type, c.compute.dtype,
                                   c.compute.precision)


def store_of(config: HarkenConfig) -> VoiceprintStore:
    return VoiceprintStore(path=config.speakers.store)


def diarization_options(config: HarkenConfig,
                        values: dict[Key, float] | None = None) -> DiarizationOptions:
    """The stage's options; `values` overrides resolved thresholds (what `tune` tries)."""
    s = config.speakers
    t = {key: r.value for key, r in thresholds(config).items()} | (values or {})
    latency = s.latency_s if s.latency_s is not None else s.step_s
    return DiarizationOptions(
        window_s=s.window_s, step_s=s.step_s, latency_s=latency,
        min_turn_s=s.min_turn_s, merge_gap_s=s.merge_gap_s,
        clustering=ClusteringOptions(
            tau_active=t["tau_active"], rho_update=t["rho_update"], delta_new=t["delta_new"],
            max_speakers=s.max_speakers, enrolled_threshold=t["threshold"],
            enrolled_margin=t["margin"],
            # The clustering counts time in analysed windows (one per step of speech).
            retire_after=math.ceil(s.retire_after_s / s.step_s),
            # A freed column takes a new voice only once no window being averaged and no
            # open turn can still hold the old one.
            reuse_after=math.ceil((s.window_s + latency + s.merge_gap_s) / s.step_s) + 1),
    )


def enrolled(config: HarkenConfig, model_id: str) -> tuple[list[Voiceprint], str | None]:
    """The voiceprints to seed live runs with, and a notice about unusable ones."""
    path = config.speakers.store or store_of(config).path
    if not path.exists():  # never create the store just to read it
        return [], None
    usable, other = store_of(config).for_model(model_id)
    notice = None
    if other:
        names = ", ".join(vp.name for vp in other)
        notice = (f"speakers: voiceprints of {names} were enrolled with another speaker model "
                  f"and are ignored; re-enroll them with `harken speakers enroll NAME FILE... "
                  f"--replace` to have them named")
    return [vp.voiceprint() for vp in usable], notice


def speaker_stages(config: HarkenConfig, models: SpeakerModels, *, use_store: bool = True,
                   switch: DiarizationSwitch | None = None) -> StageFactory:
    """One SpeakerStage per stream; `use_store`: seed with the enrolled voiceprints;
    `switch`: turns every stream's diarization off and on (default: always on)."""
    options = diarization_options(config)
    voiceprints, notice = enrolled(config, models.embedder.model_id) if use_store else ([], None)

    def make(ctx: StageContext) -> Stage:
        return SpeakerStage(stream=ctx.stream, segmenter=models.segmenter,
                            embedder=models.embedder, worker=ctx.worker, options=options,
                            live=ctx.live, arrivals=ctx.arrivals, voiceprints=voiceprints,
                            notice=notice, switch=switch)

    return make
