"""`harken bench captions|keywords|translation|speakers|soak`: benchmarks that print figures."""

from __future__ import annotations

import argparse
import json
from typing import Any

from harken.app.bench.captions import bench_captions
from harken.app.bench.speakers import bench_speakers
from harken.app.bench.tasks import bench_keywords, bench_translation


def _figures(args: argparse.Namespace) -> dict[str, Any]:
    verbose = not args.json
    if args.bench_command == "speakers":
        return bench_speakers(architecture=args.architecture, minutes=args.minutes,
                              audio=args.audio, device_type=args.device_type, dtype=args.dtype,
                              window_s=args.window, step_s=args.step, verbose=verbose)
    if args.bench_command == "soak":
        from harken.app.bench.soak import bench_soak

        return bench_soak(minutes=args.minutes, satellites=args.satellites, audio=args.audio,
                          restart_every_s=args.restart_every, verbose=verbose)
    if args.bench_command == "keywords":
        return bench_keywords(
            model=args.model, seconds=args.seconds, audio=args.audio,
            device_type=args.device_type, dtype=args.dtype, hop_s=args.hop, batch=args.batch,
            repeats=args.repeats, verbose=verbose)
    if args.bench_command == "translation":
        return bench_translation(
            model=args.model, seconds=args.seconds, audio=args.audio,
            device_type=args.device_type, dtype=args.dtype, languages=args.translate,
            num_beams=args.beams, max_new_tokens=args.max_new_tokens,
            max_segments=args.max_segments, verbose=verbose)
    return bench_captions(model=args.model, seconds=args.seconds, audio=args.audio,
                          device_type=args.device_type, dtype=args.dtype, hop_s=args.hop,
                          left_context_s=args.left_context, right_context_s=args.right_context,
                          verbose=verbose, realtime=not args.fast)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(_figures(args), indent=None if args.json else 2))
    return 0
