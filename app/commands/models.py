"""`harken models list|pull [ID...]`: the configured models (or the ones given) and the HF
cache."""

from __future__ import annotations

import argparse
import sys

from harken.app import flags
from harken.app.tasks.refine import with_refine_resolved
from harken.models.loading import is_cached, pull


def run(args: argparse.Namespace) -> int:
    config = with_refine_resolved(flags.load(args).config)
    configured = [("captions", config.captions.model)]
    if config.keywords.enabled or args.keywords_model:
        configured.append(("keywords", config.keywords.model))
    if config.translation.languages or args.translation_model:
        configured.append(("translation", config.translation.model))
    if config.refine.model:
        configured.append(("refine", config.refine.model))
    if config.speakers.enabled:
        configured += [("speaker", config.speakers.model),
                       ("diarization", config.speakers.diarization_model)]
    if args.models_command == "list":
        for task, model in configured:
            state = "cached" if is_cached(model) else f"not cached: `harken models pull {model}`"
            print(f"{task:<10} {model}  [{state}]")
        return 0
    if args.ids:  # `harken models pull ID`: the fix every model-load error names
        configured = [("model", model) for model in args.ids]
    for task, model in configured:
        print(f"pulling {task} model {model} ...", file=sys.stderr)
        path = pull(model)
        print(f"{task:<10} {model}  -> {path}")
    return 0
