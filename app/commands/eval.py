"""`harken eval diarization|speakers|keywords|captions`: accuracy on labelled audio
(app/eval/)."""

from __future__ import annotations

import argparse
import asyncio
import json

from harken.app import flags
from harken.app.eval import captions, keywords, speakers


def run(args: argparse.Namespace) -> int:
    config = flags.load(args).config
    if args.eval_command in speakers.ACTIONS:
        return speakers.ACTIONS[args.eval_command](args, config)
    if args.eval_command == "captions":
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
