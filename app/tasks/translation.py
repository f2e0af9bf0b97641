"""The translation task built from the configuration: the model, the target languages
checked against it (switchable at runtime), one TranslationStage per stream, and one
translated subtitle file per language."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harken.app.config import HarkenConfig
from harken.engine.sinks.base import Sink
from harken.engine.sinks.files import TranslatedSubtitleSink
from harken.engine.stages.base import Stage, StageContext, StageFactory
from harken.engine.stages.translation import GenerationWorker, TargetSelection, TranslationStage
from harken.models.errors import UnsupportedLanguageError
from harken.models.translation import (
    GenerationOptions,
    SpeechTranslator,
    TargetLanguage,
)

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


def load_translator(model: str, device_type: str, dtype: str,
                    precision: str = "auto") -> SpeechTranslator:
    return SpeechTranslator.from_pretrained(model, device=device_type, dtype=dtype,
                                            precision=precision)


def generation_options(config: HarkenConfig) -> GenerationOptions:
    t = config.translation
    return GenerationOptions(num_beams=t.num_beams, max_new_tokens=t.max_new_tokens)


def language_switch(config: HarkenConfig, translator: SpeechTranslator) -> LanguageSwitch:
    """The configured target languages, checked against the model (a bad one fails here,
    before any audio flows)."""
    t = config.translation
    targets = translator.languages(t.languages, overrides=t.language_tokens)
    return LanguageSwitch(translator=translator, selection=TargetSelection(targets=targets),
                          overrides=dict(t.language_tokens))


def translation_stages(translator: SpeechTranslator, targets: Sequence[TargetLanguage],
                       generator: GenerationWorker, *,
                       selection: TargetSelection | None = None) -> StageFactory:
    """One TranslationStage per stream, all following `selection` (default: `targets`)."""
    shared = selection if selection is not None else TargetSelection(targets=targets)

    def make(ctx: StageContext) -> Stage:
        return TranslationStage(stream=ctx.stream, translator=translator, selection=shared,
                                generator=generator, live=ctx.live, arrivals=ctx.arrivals)

    return make


def translated_sinks(config: HarkenConfig, *, stem: str, formats: Sequence[str],
                     folder: Path) -> list[Sink]:
    """One SRT/VTT per target language (talk.de.srt) for the subtitle formats asked for."""
    return [TranslatedSubtitleSink(path=folder / f"{stem}.{lang}.{fmt}", lang=lang, fmt=fmt)
            for lang in config.translation.languages for fmt in formats
            if fmt in SUBTITLE_FORMATS]
