"""The one way the app gets its models: `ModelLoader`.

A session asks it for each enabled task's model; it loads each from the configuration once
(in a thread, so the event loop and Ctrl-C stay responsive) and keeps it, so `harken
transcribe` loads once for all its files. Tests and benchmarks hand in ready models (tiny,
random or fake) instead: `ModelLoader(captioner=..., spotter=...)` then loads nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from harken.app.config import HarkenConfig
from harken.app.tasks import captions, keywords, refine, speakers, translation
from harken.app.tasks.speakers import SpeakerModels
from harken.models.captions import CtcCaptioner
from harken.models.keywords import KeywordSpotter
from harken.models.refine import SpeechRefiner
from harken.models.translation import SpeechTranslator

T = TypeVar("T")


@dataclass(kw_only=True)
class ModelLoader:
    captioner: CtcCaptioner | None = None
    spotter: KeywordSpotter | None = None
    translator: SpeechTranslator | None = None
    refiner: SpeechRefiner | None = None
    speakers: SpeakerModels | None = None

    async def captions(self, config: HarkenConfig) -> CtcCaptioner:
        if self.captioner is None:
            self.captioner = await _load(captions.load_captioner, config.captions.model, config)
        return self.captioner

    async def keywords(self, config: HarkenConfig) -> KeywordSpotter:
        if self.spotter is None:
            self.spotter = await _load(keywords.load_spotter, config.keywords.model, config)
        return self.spotter

    async def translation(self, config: HarkenConfig) -> SpeechTranslator:
        if self.translator is None:
            self.translator = await _load(translation.load_translator,
                                          config.translation.model, config)
        return self.translator

    async def refine(self, config: HarkenConfig) -> SpeechRefiner:
        if self.refiner is None:
            self.refiner = await asyncio.to_thread(refine.load_refiner, config)
        return self.refiner

    async def diarization(self, config: HarkenConfig) -> SpeakerModels:
        if self.speakers is None:
            self.speakers = await speakers.load_models(config)
        return self.speakers


async def _load(load: Callable[[str, str, str, str], T], model: str,
                config: HarkenConfig) -> T:
    """`load(model, device type, dtype, precision)` in a thread: loading blocks for seconds."""
    c = config.compute
    return await asyncio.to_thread(load, model, c.device_type, c.dtype, c.precision)
