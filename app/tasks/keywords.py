"""The keyword task built from the configuration: the model, the keywords checked against
its labels, and one KeywordStage per stream following one shared, switchable selection."""

from __future__ import annotations

from collections.abc import Sequence

from harken.app.config import HarkenConfig
from harken.engine.stages.base import Stage, StageContext, StageFactory
from harken.engine.stages.keywords import KeywordSelection, KeywordStage, SpottingOptions
from harken.models.keywords import KeywordSpotter, resolve_keywords
from harken.models.triggers import TriggerOptions


def load_spotter(model: str, device_type: str, dtype: str,
                 precision: str = "auto") -> KeywordSpotter:
    return KeywordSpotter.from_pretrained(model, device=device_type, dtype=dtype,
                                          precision=precision)


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


