"""`harken bench captions|keywords|translation|speakers|soak`: benchmarks that print figures."""

from __future__ import annotations

import argparse
import json
from typing import Any

from harken.app.bench.all import bench_all
from harken.app.bench.captions import bench_captions
from harken.app.bench.checks import bench_model_flags, check_bench_args
from harken.app.bench.speakers import bench_speakers
from harken.app.bench.streams import bench_streams, parse_tasks
from harken.app.bench.tasks import bench_keywords, bench_translation


def _figures(args: argparse.Namespace) -> dict[str, Any]:
    verbose = not args.json
    if args.bench_command == "all":
        return bench_all(seconds=args.seconds, audio=args.audio, device_type=args.device_type,
                         dtype=args.dtype, precision=args.precision, captions=args.captions_arch,
                         languages=tuple(args.translate), max_new_tokens=args.max_new_tokens,
                         inference_threads=args.inference_threads,
                         generation_threads=args.generation_threads, verbose=verbose,
                         realtime=not args.fast)
    if args.bench_command == "precision":
        from harken.app.bench.precision import bench_precision

        return bench_precision(tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
                               audio_root=args.audio_root, threads=args.threads,
                               max_new_tokens=args.max_new_tokens)
    if args.bench_command == "streams":
        return bench_streams(streams=args.streams, find=args.find_capacity,
                             tasks=parse_tasks(args.tasks), model=args.model,
                             seconds=args.seconds, audio=args.audio,
                             device_type=args.device_type, dtype=args.dtype,
                             precision=args.precision, max_batch=args.max_batch,
                             max_streams=args.max_streams, vad_engine=args.vad_engine,
                             vad_threads=args.vad_threads,
                             inference_threads=args.inference_threads, verbose=verbose)
    if args.bench_command == "speakers":
        return bench_speakers(architecture=args.architecture, minutes=args.minutes,
                              audio=args.audio, device_type=args.device_type, dtype=args.dtype,
                              window_s=args.window, step_s=args.step, verbose=verbose)
    if args.bench_command == "soak":
        from harken.app.bench.soak import bench_soak

        return bench_soak(minutes=args.minutes, satellites=args.satellites, audio=args.audio,
                          restart_every_s=args.restart_every, heap_trim_s=args.heap_trim,
                          verbose=verbose)
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
    model = getattr(args, "architecture" if args.bench_command == "speakers" else "model", None)
    with bench_model_flags(args.bench_command, model if isinstance(model, str) else None):
        check_bench_args(args)  # before any model loads
        figures = _figures(args)
    print(json.dumps(figures, indent=None if args.json else 2))
    return 0
