"""`harken models list|pull`: the configured models and the HF cache."""

from __future__ import annotations

import argparse
import sys

from harken.app import flags
from harken.models.loading import is_cached, pull


def run(args: argparse.Namespace) -> int:
    config = flags.load(args).config
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
            state = "cached" if is_cached(model) else "not cached (run `harken models pull`)"
            print(f"{task:<10} {model}  [{state}]")
        return 0
    for task, model in configured:
        print(f"pulling {task} model {model} ...", file=sys.stderr)
        path = pull(model)
        print(f"{task:<10} {model}  -> {path}")
    return 0
