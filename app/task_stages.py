"""The keyword and translation tasks, built from the configuration (used by app/factory.py).

`async with task_stages(config) as factories:` loads the models of the enabled tasks (in a
thread, so the loop stays responsive), checks the requested keywords and languages against
them (a bad one fails before any audio flows), owns the translation's generation thread and
yields one StageFactory per enabled task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from harken.app.config import HarkenConfig
from harken.engine.keywords import KeywordStage, SpottingOptions
from harken.engine.pipeline import Stage, StageContext, StageFactory
from harken.engine.sinks import Sink, TranslatedSubtitleSink
from harken.engine.translation import GenerationWorker, TranslationStage
from harken.models.keywords import KeywordSpotter, resolve_keywords
from harken.models.translation import GenerationOptions, SpeechTranslator, TargetLanguage
from harken.models.triggers import TriggerOptions

#: (model id or folder, device type, dtype) -> model. Tests may inject their own.
SpotterLoader = Callable[[str, str, str], KeywordSpotter]
TranslatorLoader = Callable[[str, str, str], SpeechTranslator]
SUBTITLE_FORMATS = ("srt", "vtt")  # formats that get one translated file per language


def load_spotter(model: str, device_type: str, dtype: str) -> KeywordSpotter:
    return KeywordSpotter.from_pretrained(model, device=device_type, dtype=dtype)


def load_translator(model: str, device_type: str, dtype: str) -> SpeechTranslator:
    return SpeechTranslator.from_pretrained(model, device=device_type, dtype=dtype)


def keyword_options(config: HarkenConfig, labels: Sequence[str], *,
                    model_id: str) -> tuple[tuple[str, ...], TriggerOptions, SpottingOptions]:
    """(keywords, trigger options, window options), checked against the model's labels."""
    k = config.keywords
    keywords = resolve_keywords(k.words, labels, model_id=model_id)
    thresholds = {resolve_keywords([word], labels, model_id=model_id)[0]: value
                  for word, value in k.thresholds.items()}
    missing = sorted(set(thresholds) - set(keywords))
    if missing:
        keywords = (*keywords, *missing)  # a keyword given a threshold is spotted too
    trigger = TriggerOptions(threshold=k.threshold, thresholds=thresholds, patience=k.patience,
                             refractory_s=k.refractory_s)
    spotting = SpottingOptions(window_s=k.window_s, hop_s=min(k.hop_s, k.window_s),
                               min_speech_s=min(k.min_speech_s, k.window_s))
    return keywords, trigger, spotting


def keyword_stages(config: HarkenConfig, spotter: KeywordSpotter) -> StageFactory:
    keywords, trigger, spotting = keyword_options(config, spotter.labels,
                                                  model_id=spotter.model_id)

    def make(ctx: StageContext) -> Stage:
        return KeywordStage(stream=ctx.stream, spotter=spotter, worker=ctx.worker,
                            keywords=keywords, trigger=trigger, options=spotting, live=ctx.live,
                            arrivals=ctx.arrivals)

    return make


def translation_stages(translator: SpeechTranslator, targets: Sequence[TargetLanguage],
                       generator: GenerationWorker) -> StageFactory:
    def make(ctx: StageContext) -> Stage:
        return TranslationStage(stream=ctx.stream, translator=translator, targets=targets,
                                generator=generator, live=ctx.live, arrivals=ctx.arrivals)

    return make


@asynccontextmanager
async def task_stages(config: HarkenConfig, *, spotter: KeywordSpotter | None = None,
                      translator: SpeechTranslator | None = None,
                      spotter_loader: SpotterLoader = load_spotter,
                      translator_loader: TranslatorLoader = load_translator,
                      ) -> AsyncIterator[list[StageFactory]]:
    """Stage factories of the enabled keyword and translation tasks (none when both are off)."""
    c = config
    factories: list[StageFactory] = []
    if c.keywords.enabled:
        if spotter is None:
            spotter = await asyncio.to_thread(spotter_loader, c.keywords.model,
                                              c.compute.device_type, c.compute.dtype)
        factories.append(keyword_stages(config, spotter))
    if not c.translation.languages:
        yield factories
        return
    if translator is None:
        translator = await asyncio.to_thread(translator_loader, c.translation.model,
                                             c.compute.device_type, c.compute.dtype)
    translator.options = GenerationOptions(num_beams=c.translation.num_beams,
                                           max_new_tokens=c.translation.max_new_tokens)
    targets = translator.languages(c.translation.languages,
                                   overrides=c.translation.language_tokens)
    async with GenerationWorker(name=str(translator.device)) as generator:
        factories.append(translation_stages(translator, targets, generator))
        yield factories


def translated_sinks(config: HarkenConfig, *, stem: str, formats: Sequence[str],
                     folder: Path) -> list[Sink]:
    """One SRT/VTT per target language (talk.de.srt) for the subtitle formats asked for."""
    return [TranslatedSubtitleSink(path=folder / f"{stem}.{lang}.{fmt}", lang=lang, fmt=fmt)
            for lang in config.translation.languages for fmt in formats
            if fmt in SUBTITLE_FORMATS]
