"""The refine task built from the configuration: the sequence-to-sequence model, one
RefineStage per stream (aligned to the caption model's vocabulary and frames), and the
subtitle/transcript file sinks that wait for refinements (docs/refine.md)."""

from __future__ import annotations

from collections.abc import Sequence

from harken.app.config import HarkenConfig
from harken.engine.pipeline import Stage, StageContext, StageFactory
from harken.engine.sinks.base import Sink
from harken.engine.sinks.files import SrtSink, TxtSink, VttSink
from harken.engine.sinks.refined import RefinedFinals
from harken.engine.stages.refine import RefineStage, RefineStageOptions
from harken.engine.stages.translation import GenerationWorker
from harken.models.alignment import CtcVocabulary
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.guard import GuardOptions
from harken.models.refine import RefineOptions, SpeechRefiner

#: sinks that write each caption once, and so should carry the refined text
REFINED_SINKS = (SrtSink, VttSink, TxtSink)


def refine_options(config: HarkenConfig) -> RefineOptions:
    r = config.refine
    return RefineOptions(language=r.language, num_beams=r.num_beams,
                         max_new_tokens=r.max_new_tokens)


def load_refiner(config: HarkenConfig) -> SpeechRefiner:
    c = config
    return SpeechRefiner.from_pretrained(c.refine.model, device=c.compute.device_type,
                                         dtype=c.compute.dtype, options=refine_options(c))


def guard_options(config: HarkenConfig) -> GuardOptions:
    r = config.refine
    return GuardOptions(enabled=r.guard, max_cer=r.max_cer, max_repeats=r.max_repeats)


def refine_stages(config: HarkenConfig, refiner: SpeechRefiner, captioner: CtcCaptioner,
                  generator: GenerationWorker) -> StageFactory:
    """One RefineStage per stream; it must come after the caption stage (it takes the
    caption stage's closed segments)."""
    r = config.refine
    options = RefineStageOptions(guard=guard_options(config), max_wait_s=r.max_wait_s,
                                 pad_before_s=r.pad_before_s, pad_after_s=r.pad_after_s)
    vocabulary = CtcVocabulary.from_tokenizer(captioner.tokenizer)
    frame_s = captioner.geometry.frame_samples / SAMPLE_RATE

    def make(ctx: StageContext) -> Stage:
        return RefineStage(stream=ctx.stream, refiner=refiner, generator=generator,
                           live=ctx.live, arrivals=ctx.arrivals, finals=ctx.finals,
                           vocabulary=vocabulary, frame_s=frame_s, options=options)

    return make


def refined_sinks(sinks: Sequence[Sink], *, enabled: bool,
                  max_wait_s: float | None) -> list[Sink]:
    """With refinement `enabled`, SRT, VTT and TXT sinks wait for each caption's refinement
    (at most `max_wait_s`; None: always, so the output never depends on timing)."""
    if not enabled:
        return list(sinks)
    wait = max_wait_s
    return [RefinedFinals(sink, max_wait_s=wait) if isinstance(sink, REFINED_SINKS) else sink
            for sink in sinks]
