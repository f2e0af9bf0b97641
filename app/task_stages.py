"""The keyword and translation tasks, built from the configuration (used by app/factory.py).

`async with task_stages(config) as tasks:` loads the models of the enabled tasks (in a
thread, so the loop stays responsive), checks the requested keywords and languages against
them (a bad one fails before any audio flows), owns the translation's generation thread and
yields `TaskStages`: one StageFactory per enabled task, and the selections that switch the
keywords and target languages of every stream at runtime (the MQTT control topic).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harken.app.config import HarkenConfig
from harken.engine.keywords import KeywordSelection, KeywordStage, SpottingOptions
from harken.engine.pipeline import Stage, StageContext, StageFactory
from harken.engine.sinks import Sink, TranslatedSubtitleSink
from harken.engine.translation import GenerationWorker, TargetSelection, TranslationStage
from harken.models.keywords import KeywordSpotter, resolve_keywords
from harken.models.translation import (
    GenerationOptions,
    SpeechTranslator,
    TargetLanguage,
    UnsupportedLanguageError,
)
from harken.models.triggers import TriggerOptions

#: (model id or folder, device type, dtype) -> model. Tests may inject their own.
SpotterLoader = Callable[[str, str, str], KeywordSpotter]
TranslatorLoader = Callable[[str, str, str], SpeechTranslator]
SUBTITLE_FORMATS = ("srt", "vtt")  # formats that get one translated file per language


@dataclass(frozen=True, slots=True, kw_only=True)
class LanguageSwitch:
    """The translation's shared target languages, and how codes become language tokens."""

    translator: SpeechTranslator
    selection: TargetSelection
    overrides: dict[str, str] = field(default_factory=dict)  # translation.language_tokens

    def set(self, codes: Sequence[str]) -> None:
        """Translate into `codes` from the next segment on (none: stop translating);
        UnsupportedLanguageError lists the supported codes, and then nothing changes."""
        try:
            targets = self.translator.languages(codes, overrides=self.overrides)
        except UnsupportedLanguageError as exc:
            supported = ", ".join(sorted({*self.translator.supported_languages(),
                                          *self.overrides}))
            raise UnsupportedLanguageError(
                f"{self.translator.model_id!r} cannot translate into {', '.join(codes)}; "
                f"choose one of: {supported}") from exc
        self.selection.set(targets)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStages:
    """What `task_stages` yields."""

    factories: list[StageFactory]
    keywords: KeywordSelection | None = None  # None: keyword spotting is off
    languages: LanguageSwitch | None = None  # None: translation is off


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


def keyword_selection(config: HarkenConfig, spotter: KeywordSpotter) -> KeywordSelection:
    keywords, _, _ = keyword_options(config, spotter.labels, model_id=spotter.model_id)
    return KeywordSelection(labels=spotter.labels, keywords=keywords, model_id=spotter.model_id)


def keyword_stages(config: HarkenConfig, spotter: KeywordSpotter, *,
                   selection: KeywordSelection | None = None) -> StageFactory:
    """One KeywordStage per stream, all following `selection` (default: the configured
    keywords, fixed)."""
    _, trigger, spotting = keyword_options(config, spotter.labels, model_id=spotter.model_id)
    shared = selection if selection is not None else keyword_selection(config, spotter)

    def make(ctx: StageContext) -> Stage:
        return KeywordStage(stream=ctx.stream, spotter=spotter, worker=ctx.worker,
                            selection=shared, trigger=trigger, options=spotting,
                            live=ctx.live, arrivals=ctx.arrivals)

    return make


def translation_stages(translator: SpeechTranslator, targets: Sequence[TargetLanguage],
                       generator: GenerationWorker, *,
                       selection: TargetSelection | None = None) -> StageFactory:
    """One TranslationStage per stream, all following `selection` (default: `targets`)."""
    shared = selection if selection is not None else TargetSelection(targets=targets)

    def make(ctx: StageContext) -> Stage:
        return TranslationStage(stream=ctx.stream, translator=translator, selection=shared,
                                generator=generator, live=ctx.live, arrivals=ctx.arrivals)

    return make


@asynccontextmanager
async def task_stages(config: HarkenConfig, *, spotter: KeywordSpotter | None = None,
                      translator: SpeechTranslator | None = None,
                      spotter_loader: SpotterLoader = load_spotter,
                      translator_loader: TranslatorLoader = load_translator,
                      ) -> AsyncIterator[TaskStages]:
    """Stage factories of the enabled keyword and translation tasks (none when both are off)."""
    c = config
    factories: list[StageFactory] = []
    keywords: KeywordSelection | None = None
    if c.keywords.enabled:
        if spotter is None:
            spotter = await asyncio.to_thread(spotter_loader, c.keywords.model,
                                              c.compute.device_type, c.compute.dtype)
        keywords = keyword_selection(config, spotter)
        factories.append(keyword_stages(config, spotter, selection=keywords))
    if not c.translation.languages:
        yield TaskStages(factories=factories, keywords=keywords)
        return
    if translator is None:
        translator = await asyncio.to_thread(translator_loader, c.translation.model,
                                             c.compute.device_type, c.compute.dtype)
    translator.options = GenerationOptions(num_beams=c.translation.num_beams,
                                           max_new_tokens=c.translation.max_new_tokens)
    targets = translator.languages(c.translation.languages,
                                   overrides=c.translation.language_tokens)
    languages = LanguageSwitch(translator=translator,
                               selection=TargetSelection(targets=targets),
                               overrides=dict(c.translation.language_tokens))
    async with GenerationWorker(name=str(translator.device)) as generator:
        factories.append(translation_stages(translator, targets, generator,
                                            selection=languages.selection))
        yield TaskStages(factories=factories, keywords=keywords, languages=languages)


def translated_sinks(config: HarkenConfig, *, stem: str, formats: Sequence[str],
                     folder: Path) -> list[Sink]:
    """One SRT/VTT per target language (talk.de.srt) for the subtitle formats asked for."""
    return [TranslatedSubtitleSink(path=folder / f"{stem}.{lang}.{fmt}", lang=lang, fmt=fmt)
            for lang in config.translation.languages for fmt in formats
            if fmt in SUBTITLE_FORMATS]
