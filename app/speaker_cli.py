"""Command-line parts of the speakers task (used by app/cli.py). Kept light: no torch import.

    harken run|transcribe ... --diarize [--speaker-model ID|DIR] [--diarization-model ID|DIR]
    harken speakers enroll NAME FILE... | --record SECONDS | FILE --from S.jsonl --speaker S2
    harken speakers list | remove NAME | verify NAME FILE
    harken eval diarization AUDIO RTTM [--collar S] [--skip-overlap] [--out-rttm FILE]
    harken eval speakers DIR
    harken run|transcribe ... --diarize --format rttm
    harken bench speakers --architecture base --minutes M [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harken.app.config import ConfigError

#: flag dest -> (dotted config key, flag spelling), merged into cli.FLAG_KEYS
SPEAKER_FLAG_KEYS = {
    "diarize": ("speakers.enabled", "--diarize"),
    "speaker_model": ("speakers.model", "--speaker-model"),
    "diarization_model": ("speakers.diarization_model", "--diarization-model"),
    "speaker_store": ("speakers.store", "--speaker-store"),
    "speaker_threshold": ("speakers.threshold", "--speaker-threshold"),
}


def _model_flags(p: argparse.ArgumentParser | Any, *, diarization: bool = True) -> None:
    p.add_argument("--speaker-model", metavar="ID|DIR",
                   help="x-vector speaker model (default microsoft/unispeech-sat-base-plus-sv)")
    if diarization:
        p.add_argument("--diarization-model", metavar="ID|DIR",
                       help="segmentation model (default microsoft/unispeech-sat-base-plus-sd)")
    p.add_argument("--speaker-store", type=Path, metavar="FILE",
                   help="voiceprint database (default: voiceprints.sqlite in the user data dir)")
    p.add_argument("--speaker-threshold", type=float, metavar="SIM",
                   help="cosine similarity to name/accept an enrolled speaker (default 0.7)")


def add_diarize_flags(p: argparse.ArgumentParser) -> None:
    """--diarize and the speaker model flags, for run, transcribe and config show."""
    g = p.add_argument_group("speakers (docs/speakers.md)")
    g.add_argument("--diarize", action="store_true", default=None,
                   help="who is speaking: speaker_turn events, speakers on captions, RTTM")
    _model_flags(g)


def _compute_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (default: user config dir)")
    p.add_argument("--device-type", metavar="auto|cpu|cuda[:N]", help="compute device")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])


EVAL_TASKS = ("diarization", "speakers")


def check_formats(config: Any, formats: Sequence[str]) -> None:
    """RTTM holds speaker turns: asking for it without diarization is a mistake."""
    if "rttm" in formats and not config.speakers.enabled:
        raise ConfigError("--format rttm writes speaker turns: add --diarize (or set "
                          "speakers.enabled = true)")


def add_speakers_parser(sub: Any) -> None:
    """The `speakers` subcommand."""
    sp = sub.add_parser("speakers", help="enroll, list, remove and verify known speakers")
    ssub = sp.add_subparsers(dest="speakers_command", required=True, metavar="ACTION")
    en = ssub.add_parser("enroll", help="add a person's voiceprint from speech clips")
    en.add_argument("name", metavar="NAME")
    en.add_argument("files", nargs="*", type=Path, metavar="FILE")
    en.add_argument("--record", type=float, metavar="SECONDS",
                    help="record from the microphone instead of files")
    en.add_argument("--from", dest="from_session", type=Path, metavar="SESSION.jsonl",
                    help="take the turns of --speaker from a --diarize run's JSONL (give "
                         "the run's audio FILE)")
    en.add_argument("--speaker", metavar="LABEL", help="with --from: the label, e.g. S2")
    en.add_argument("--replace", action="store_true",
                    help="start the voiceprint afresh instead of adding to it")
    ssub.add_parser("list", help="enrolled people")
    rm = ssub.add_parser("remove", help="delete a person's voiceprint")
    rm.add_argument("name", metavar="NAME")
    vf = ssub.add_parser("verify", help="is FILE's voice NAME's? (exit 0 yes, 1 no)")
    vf.add_argument("name", metavar="NAME")
    vf.add_argument("file", type=Path, metavar="FILE")
    for p in (en, ssub.choices["list"], rm, vf):
        _compute_flags(p)
        _model_flags(p, diarization=False)


def add_eval_parsers(esub: Any) -> None:
    """`eval diarization` and `eval speakers`, under the `eval` subcommand."""
    ed = esub.add_parser("diarization", help="DER of the live diarization against an RTTM")
    ed.add_argument("audio", type=Path, metavar="AUDIO")
    ed.add_argument("rttm", type=Path, metavar="RTTM")
    ed.add_argument("--collar", type=float, default=0.0, metavar="S",
                    help="forgiveness around reference boundaries (default 0: strict)")
    ed.add_argument("--skip-overlap", action="store_true", help="do not score overlapped speech")
    ed.add_argument("--out-rttm", type=Path, metavar="FILE", help="also write the hypothesis")
    ed.add_argument("--json", action="store_true", help="print one JSON object")
    es = esub.add_parser("speakers", help="EER over all pairs of DIR/<speaker>/<clip>")
    es.add_argument("dir", type=Path, metavar="DIR")
    es.add_argument("--json", action="store_true", help="print one JSON object")
    for p in (ed, es):
        _compute_flags(p)
        _model_flags(p)


def add_bench(bsub: Any) -> None:
    bs = bsub.add_parser("speakers", help="live diarization step time, RTF and memory")
    bs.add_argument("--architecture", default="base", metavar="base|large|SV,SD",
                    help="full-size random UniSpeech-SAT, or two checkpoints")
    bs.add_argument("--minutes", type=float, default=1.0, help="audio length")
    bs.add_argument("--audio", type=Path, help="speech file to use (default: assets sample)")
    bs.add_argument("--device-type", default="auto")
    bs.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    bs.add_argument("--window", type=float, default=5.0, metavar="S")
    bs.add_argument("--step", type=float, default=0.5, metavar="S")
    bs.add_argument("--json", action="store_true", help="print only the JSON object")


def cmd_speakers(args: argparse.Namespace, config: Any) -> int:
    from harken.app import speakers_cmd

    return speakers_cmd.run(args, config)


def cmd_eval(args: argparse.Namespace, config: Any) -> int:
    from harken.app import eval_cmd

    return eval_cmd.run(args, config)


def cmd_bench(args: argparse.Namespace) -> int:
    from harken.app.bench_speakers import bench_speakers

    result = bench_speakers(architecture=args.architecture, minutes=args.minutes,
                            audio=args.audio, device_type=args.device_type, dtype=args.dtype,
                            window_s=args.window, step_s=args.step, verbose=not args.json)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
