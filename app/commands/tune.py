"""`harken tune diarization AUDIO RTTM [AUDIO RTTM ...]` and `harken tune speakers DIR`:
thresholds calibrated on your own labelled audio, written into your config file under the
model they belong to (app/tune/, docs/speakers.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harken.app import flags
from harken.app.config import LoadedConfig, default_config_path
from harken.app.tasks.thresholds import overridden, speaker_model_id
from harken.app.tune import diarization, speakers
from harken.app.tune.config_file import write_calibration


def _target(loaded: LoadedConfig, args: argparse.Namespace) -> Path:
    """The config file in effect (--config, HARKEN_CONFIG or the default path)."""
    if loaded.path is not None:
        return loaded.path
    given = getattr(args, "config", None)
    return Path(given) if given is not None else default_config_path()


def _write(loaded: LoadedConfig, args: argparse.Namespace,
           values: dict[str, dict[str, float]]) -> str:
    if args.no_write:
        return "not written (--no-write)"
    path = _target(loaded, args)
    write_calibration(path, values)
    tables = ", ".join(f'[speakers.calibration."{m}"]' for m in values)
    return f"written to {path}: {tables}"


def tune_diarization(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    result = diarization.tune(config, args.pairs, trials=args.trials, collar=args.collar,
                              seed=args.seed, quiet=args.json)
    values = diarization.calibration_values(config, result.after)
    where = _write(loaded, args, values)
    for note in overridden(config, diarization.TUNED):
        print(f"harken: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"der_before": round(result.der_before, 4),
                          "der_after": round(result.der_after, 4),
                          "before": {k: round(v, 4) for k, v in result.before.items()},
                          "after": {k: round(v, 4) for k, v in result.after.items()},
                          "trials": result.trials, "files": result.files,
                          "collar_s": args.collar, "written": not args.no_write,
                          "models": {m: {k: round(v, 4) for k, v in kv.items()}
                                     for m, kv in values.items()}}))
        return 0
    print(f"DER {100 * result.der_before:.1f}% before -> {100 * result.der_after:.1f}% after "
          f"{result.trials} trials ({result.files} file(s), {result.reference_speech_s:.1f} s "
          f"of reference speech, collar {args.collar:.2f} s)")
    for key in diarization.TUNED:
        print(f"  {key:<10} {result.before[key]:.4f} -> {result.after[key]:.4f}")
    print(where)
    return 0


def tune_speakers(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    config = loaded.config
    result = speakers.tune(config, args.dir)
    for note in result.skipped:
        print(f"harken: skipped: {note}", file=sys.stderr)
    values = {speaker_model_id(config): {"threshold": result.after}}
    where = _write(loaded, args, values)
    for note in overridden(config, ("threshold",)):
        print(f"harken: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"eer": round(result.eer, 4), "before": round(result.before, 4),
                          "after": round(result.after, 4), "model": result.model_id,
                          "speakers": result.speakers, "files": result.files,
                          "written": not args.no_write}))
        return 0
    print(f"EER {100 * result.eer:.1f}% at threshold {result.after:.4f} ({result.speakers} "
          f"speakers, {result.files} files)")
    print(f"threshold {result.before:.4f} ({result.before_origin}) -> {result.after:.4f}; at "
          f"the old one: false accepts {100 * result.far_before:.1f}%, false rejects "
          f"{100 * result.frr_before:.1f}%")
    print(where)
    return 0


def run(args: argparse.Namespace) -> int:
    loaded = flags.load(args)
    if args.tune_command == "diarization":
        return tune_diarization(args, loaded)
    return tune_speakers(args, loaded)
