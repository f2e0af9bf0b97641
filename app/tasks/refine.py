"""The refine task built from the configuration: the sequence-to-sequence model, one
RefineStage per stream (aligned to the caption model's vocabulary and frames), and the
subtitle/transcript file sinks that wait for refinements (docs/refine.md)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from harken.app.config import HarkenConfig
from harken.engine.sinks.base import Sink
from harken.engine.sinks.files import SrtSink, TxtSink, VttSink
from harken.engine.sinks.refined import RefinedFinals
from harken.engine.stages.base import Stage, StageContext, StageFactory
from harken.engine.stages.refine import RefineStage, RefineStageOptions
from harken.engine.stages.translation import GenerationWorker
from harken.models.alignment import CtcVocabulary
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.errors import ConfigError
from harken.models.guard import GuardOptions
from harken.models.loading import hub_offline, hub_reachable, is_cached, resolve_device
from harken.models.refine import RefineOptions, SpeechRefiner

log = logging.getLogger(__name__)

AUTO = "auto"
OFF = ("", "none", "off")
#: refine.model = auto on CUDA. Measured on one H200 (docs/gpu.md): a model of its shape
#: refines a 20 s segment in at most 0.52 s (float16), inside the 1 s target; its accuracy
#: could not be measured here (its weights cannot be downloaded in this workplace).
GPU_DEFAULT_MODEL = "openai/whisper-large-v3-turbo"

#: sinks that write each caption once, and so should carry the refined text
REFINED_SINKS = (SrtSink, VttSink, TxtSink)


def chosen_model(model: str, *, device_type: str) -> str:
    """The checkpoint a run refines with ("" for none): `auto` is GPU_DEFAULT_MODEL when the
    device resolves to CUDA and none on CPU, where Whisper competes with the live captions
    for the cores (docs/refine.md); `none`, `off` or empty: none."""
    text = model.strip()
    if text.lower() in OFF:
        return ""
    if text.lower() != AUTO:
        return text
    return GPU_DEFAULT_MODEL if resolve_device(device_type).type == "cuda" else ""


def with_refine_resolved(config: HarkenConfig) -> HarkenConfig:
    """`config` with refine.model made concrete (idempotent). An automatic choice that is
    not in the HF cache while offline is dropped with one warning, never a failed run."""
    requested = config.refine.model
    model = chosen_model(requested, device_type=config.compute.device_type)
    if requested.strip().lower() == AUTO and model and not is_cached(model) \
            and (hub_offline() or not hub_reachable()):
        log.warning("refinement is off: refine.model = auto picks %s on CUDA, which is not "
                    "in the HF cache and the hub is out of reach; `harken models pull %s` while "
                    "online, or set refine.model (none to silence this)", model, model)
        model = ""
    if model == requested:
        return config
    return config.model_copy(update={"refine": config.refine.model_copy(
        update={"model": model})})


def check_refine_flags(*, language: str | None, guard: bool | None, config: HarkenConfig,
                       guard_flag: str = "--no-refine-guard") -> None:
    """--refine-language and --no-refine-guard with no refinement would do nothing.
    `config` as loaded (refine.model not yet resolved)."""
    given = [flag for flag, value in (("--refine-language", language),
                                      (guard_flag, guard)) if value is not None]
    requested = config.refine.model
    if not given or chosen_model(requested, device_type=config.compute.device_type):
        return
    why = "refine.model = auto means none on CPU" if requested.strip().lower() == AUTO \
        else "refinement is off"
    raise ConfigError(f"{' and '.join(given)} tune{'s' if len(given) == 1 else ''} the "
                      f"refinement, but none runs ({why}): add --refine-model ID|DIR, or "
                      "drop them")


def refine_options(config: HarkenConfig) -> RefineOptions:
    r = config.refine
    return RefineOptions(language=r.language, num_beams=r.num_beams,
                         max_new_tokens=r.max_new_tokens, encoder_dtype=r.encoder_dtype)


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
                                 pad_before_s=r.pad_before_s, pad_after_s=r.pad_after_s,
                                 join_short_s=r.join_short_s)
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
