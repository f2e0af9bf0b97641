"""`harken eval diarization|speakers|keywords|captions|vad`: accuracy on labelled audio
(app/eval/)."""

from __future__ import annotations

import argparse
import asyncio
import json

from harken.app import flags


def run(args: argparse.Namespace) -> int:
    config = flags.load(args).config
    if args.eval_command == "vad":  # no model stack (torch) for the VAD alone
        from harken.app.eval import vad

        return vad.run(args, config)
    from harken.app.eval import keywords, speakers

    if args.eval_command in speakers.ACTIONS:
        return speakers.ACTIONS[args.eval_command](args, config)
    if args.eval_command == "captions":
        from harken.app.eval import captions
        from harken.app.tasks.refine import check_refine_flags

        check_refine_flags(language=getattr(args, "refine_language", None),
                           guard=args.refine_guard, config=config, guard_flag="--no-guard")
        result = asyncio.run(captions.evaluate(config, args.path, realtime=not args.fast))
        if args.json:
            print(json.dumps(result))
        else:
            captions.print_report(result)
        return 0
    result = asyncio.run(keywords.evaluate(config, args.folder, negatives=args.negatives))
    if args.json:
        print(json.dumps(result))
    else:
        keywords.print_report(result)
    return 0
