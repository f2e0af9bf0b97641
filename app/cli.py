"""The `harken` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harken.app import speaker_cli
from harken.app.config import LoadedConfig, describe, load_config
from harken.app.task_flags import (
    TASK_FLAG_KEYS,
    add_bench_parsers,
    add_eval_keywords,
    add_task_flags,
    run_bench,
    run_eval_keywords,
)
from harken.models.errors import HarkenError, first_user_error

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for `cmd | head`

# flag dest -> dotted config key (flags override file and environment)
FLAG_KEYS = {
    "captions_model": ("captions.model", "--captions-model"),
    "device_type": ("compute.device_type", "--device-type"),
    "dtype": ("compute.dtype", "--dtype"),
    "device": ("audio.device", "--device"),
    "hop": ("captions.hop_s", "--hop"),
    "left_context": ("captions.left_context_s", "--left-context"),
    "right_context": ("captions.right_context_s", "--right-context"),
    "vad_aggressiveness": ("vad.aggressiveness", "--vad-aggressiveness"),
    "max_segment": ("vad.max_segment_s", "--max-segment"),
    "out": ("output.dir", "--out"),
    "format": ("output.formats", "--format"),
    "mqtt": ("mqtt.url", "--mqtt"),
    "mqtt_prefix": ("mqtt.prefix", "--mqtt-prefix"),
    "site": ("mqtt.site", "--site"),
    "hermes": ("mqtt.hermes", "--hermes"),
    "ha_discovery": ("mqtt.ha_discovery", "--ha-discovery"),
    "mqtt_ca": ("mqtt.ca_file", "--mqtt-ca"),
    "mqtt_cert": ("mqtt.cert_file", "--mqtt-cert"),
    "mqtt_key": ("mqtt.key_file", "--mqtt-key"),
    "mqtt_password_file": ("mqtt.password_file", "--mqtt-password-file"),
}
FLAG_KEYS.update(TASK_FLAG_KEYS)  # --keywords, --translate, ... (app/task_flags.py)
FLAG_KEYS.update(speaker_cli.SPEAKER_FLAG_KEYS)  # --diarize, --speaker-model, ...


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (default: user config dir)")
    p.add_argument("--captions-model", metavar="ID|DIR", help="CTC model: hub id or folder")
    p.add_argument("--device-type", metavar="auto|cpu|cuda[:N]", help="compute device")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--hop", type=float, metavar="S", help="seconds between partial updates")
    p.add_argument("--left-context", type=float, metavar="S")
    p.add_argument("--right-context", type=float, metavar="S")
    p.add_argument("--vad-aggressiveness", type=int, choices=[0, 1, 2, 3])
    p.add_argument("--max-segment", type=float, metavar="S", help="split longer speech")
    add_task_flags(p)
    speaker_cli.add_diarize_flags(p)


def _input_arg(text: str) -> Path | str:
    """A file path, or an mqtt[s]:// URL kept as text (a Path would fold its '//')."""
    return text if text.startswith(("mqtt://", "mqtts://")) else Path(text)


def _add_mqtt(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MQTT (docs/mqtt.md)")
    g.add_argument("--mqtt", metavar="URL|embedded",
                   help="publish results: mqtt://[user@]host[:port], mqtts://... or embedded")
    g.add_argument("--mqtt-prefix", metavar="PREFIX", help="topic prefix (default harken)")
    g.add_argument("--site", metavar="ID", help="site id in topics (default: host name)")
    g.add_argument("--hermes", action="store_true", default=None,
                   help="also publish Hermes topics (Rhasspy)")
    g.add_argument("--ha-discovery", action="store_true", default=None,
                   help="announce Home Assistant entities")
    g.add_argument("--mqtt-ca", type=Path, metavar="FILE", help="CA of the broker (mqtts://)")
    g.add_argument("--mqtt-cert", type=Path, metavar="FILE", help="TLS client certificate")
    g.add_argument("--mqtt-key", type=Path, metavar="FILE", help="TLS client key")
    g.add_argument("--mqtt-password-file", type=Path, metavar="FILE",
                   help="file holding the broker password (or HARKEN_MQTT_PASSWORD)")


def _formats(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harken", description="Real-time listening engine: live captions from speech.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="live captions from the microphone or a file")
    _add_common(run)
    run.add_argument("--input", metavar="FILE|URL", type=_input_arg,
                     help="read a file instead of the mic, or satellite audio: "
                          "mqtt://host/hermes/audioServer/+/audioFrame")
    run.add_argument("--fast", action="store_true", help="process the file as fast as possible")
    run.add_argument("--device", metavar="N|NAME", help="input device (see `harken devices`)")
    run.add_argument("--jsonl", action="store_true", help="print one JSON event per line")
    run.add_argument("--no-tui", action="store_true",
                     help="plain printed captions instead of the terminal app")
    run.add_argument("--out", type=Path, metavar="DIR", help="also write transcript files here")
    run.add_argument("--format", type=_formats, metavar="LIST",
                     help="file formats with --out: srt,vtt,jsonl,txt,rttm")
    _add_mqtt(run)

    tr = sub.add_parser("transcribe", help="transcribe files offline (same engine, no pacing)")
    _add_common(tr)
    tr.add_argument("files", nargs="+", type=Path, metavar="FILE")
    tr.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: .)")
    tr.add_argument("--format", type=_formats, metavar="LIST", help="srt,vtt,jsonl,txt,rttm")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("devices", help="list audio input devices")

    models = sub.add_parser("models", help="list or download the configured models")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, text in (("list", "configured models and whether they are cached"),
                       ("pull", "download the configured models into the HF cache")):
        mp = msub.add_parser(name, help=text)
        mp.add_argument("--config", type=Path)
        mp.add_argument("--captions-model", metavar="ID|DIR")
        mp.add_argument("--keywords-model", metavar="ID|DIR")
        mp.add_argument("--translation-model", metavar="ID|DIR")
        mp.add_argument("--diarize", action="store_true", default=None,
                        help="include the speaker and diarization models")

    cfg = sub.add_parser("config", help="show the effective configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="every setting, its value and where it came from")
    _add_common(show)
    show.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="TASK")
    bc = bsub.add_parser("captions", help="streaming engine vs the transformers ASR pipeline")
    bc.add_argument("--model", default="hubert-base",
                    metavar="ID|DIR|hubert-base|hubert-large",
                    help="a checkpoint, or a full-size architecture with random weights")
    bc.add_argument("--seconds", type=float, default=60.0, help="audio length")
    bc.add_argument("--audio", type=Path, help="speech file to use (default: assets sample)")
    bc.add_argument("--device-type", default="auto")
    bc.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    bc.add_argument("--hop", type=float, default=0.5)
    bc.add_argument("--left-context", type=float, default=2.0)
    bc.add_argument("--right-context", type=float, default=0.5)
    bc.add_argument("--fast", action="store_true",
                    help="feed the engine unpaced (latencies then include queueing)")
    bc.add_argument("--json", action="store_true", help="print only the JSON object")
    add_bench_parsers(bsub)
    speaker_cli.add_bench(bsub)

    ev = sub.add_parser("eval", help="measure accuracy on labelled audio")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    add_eval_keywords(esub, _add_common)
    speaker_cli.add_eval_parsers(esub)
    speaker_cli.add_speakers_parser(sub)
    return parser


def _nested(flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    nested: dict[str, Any] = {}
    names: dict[str, str] = {}
    for dest, value in flags.items():
        if dest not in FLAG_KEYS or value is None:
            continue
        key, flag = FLAG_KEYS[dest]
        section, leaf = key.split(".")
        nested.setdefault(section, {})[leaf] = value
        names[key] = flag
    return nested, names


def _load(args: argparse.Namespace) -> LoadedConfig:
    flags, names = _nested(vars(args))
    return load_config(getattr(args, "config", None), flags=flags, flag_names=names)


def _cmd_config_show(args: argparse.Namespace) -> int:
    loaded = _load(args)
    rows = describe(loaded)
    if args.json:
        print(json.dumps({k: {"value": v, "from": o} for k, v, o in rows}, indent=2))
        return 0
    print(f"# config file: {loaded.path or 'none (defaults)'}")
    width = max(len(k) for k, _, _ in rows)
    for key, value, origin in rows:
        print(f"{key:<{width}}  {json.dumps(value):<36}  {origin}")
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from harken.engine.sources import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no audio input devices found; connect a microphone, or use --input FILE",
              file=sys.stderr)
        return 1
    print(f"{'index':>5}  {'channels':>8}  {'rate':>7}  name")
    for d in devices:
        mark = " (default)" if d.is_default else ""
        print(f"{d.index:>5}  {d.channels:>8}  {d.default_samplerate:>7.0f}  {d.name}{mark}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from harken.models.loading import is_cached, pull

    config = _load(args).config
    configured = [("captions", config.captions.model)]
    if config.keywords.enabled or args.keywords_model:
        configured.append(("keywords", config.keywords.model))
    if config.translation.languages or args.translation_model:
        configured.append(("translation", config.translation.model))
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


def use_tui(args: argparse.Namespace) -> bool:
    """`harken run` opens the terminal app only on a terminal, without --jsonl/--no-tui."""
    return not args.jsonl and not args.no_tui and sys.stdout.isatty()


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load(args).config
    if isinstance(args.input, Path):
        _check_files([args.input])
    from harken.app import factory

    mqtt_input = args.input if isinstance(args.input, str) else None
    mqtt = factory.mqtt_setup(config, input_url=mqtt_input)
    if mqtt_input is not None:
        if args.fast:
            raise HarkenError("--fast needs --input FILE (satellites stream in real time)")
        stream_id = "satellites"
        source = mqtt.source()
    elif args.input is not None:
        stream_id = args.input.stem or "file"
        source = factory.file_source(args.input, stream_id=stream_id,
                                     realtime=not args.fast, config=config)
    else:
        if args.fast:
            raise HarkenError("--fast needs --input FILE (a microphone runs in real time)")
        stream_id = "mic"
        source = factory.mic_source(config, stream_id=stream_id)
        asyncio.run(factory.check_source(source))
    if use_tui(args):
        from harken.app.tui_app import run_tui

        files = factory.output_sinks(config, stem=stream_id, formats=config.output.formats) \
            if args.out is not None else []
        with mqtt.broker():
            return run_tui(config, stem=stream_id, source=source,
                           file_sinks=[*files, *mqtt.sinks()], live=not args.fast)
    sinks = [factory.terminal_sink(jsonl=args.jsonl)]
    if args.out is not None:
        sinks += factory.output_sinks(config, stem=stream_id, formats=config.output.formats)
    sinks += mqtt.sinks()
    session = factory.Session(config=config, sources=[source], sinks=sinks,
                              live=not args.fast)
    with mqtt.broker():
        asyncio.run(session.run())
    return 0


def _check_files(paths: Sequence[Path]) -> dict[Path, float]:
    """Opens each input before torch is even imported: a bad file fails in a blink.
    Returns each file's duration in seconds (from its header)."""
    from harken.engine.sources import FileSource

    durations: dict[Path, float] = {}

    async def check() -> None:
        for path in paths:
            async with FileSource(path=path, stream_id="check") as source:
                durations[path] = source.duration_s

    asyncio.run(check())
    return durations


def _cmd_transcribe(args: argparse.Namespace) -> int:
    config = _load(args).config
    durations = _check_files(args.files)
    from harken.app.transcribe import transcribe_files

    speaker_cli.check_formats(config, config.output.formats)  # before any model loads
    show_progress = not args.no_progress and sys.stderr.isatty()
    written = asyncio.run(transcribe_files(config, args.files, progress=show_progress,
                                           durations=durations))
    for path in written:
        print(path)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from harken.app.bench import bench_captions

    if args.bench_command == "speakers":
        return speaker_cli.cmd_bench(args)
    if args.bench_command in ("keywords", "translation"):
        print(json.dumps(run_bench(args), indent=None if args.json else 2))
        return 0
    result = bench_captions(model=args.model, seconds=args.seconds, audio=args.audio,
                            device_type=args.device_type, dtype=args.dtype, hop_s=args.hop,
                            left_context_s=args.left_context,
                            right_context_s=args.right_context, verbose=not args.json,
                            realtime=not args.fast)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _cmd_speakers(args: argparse.Namespace) -> int:
    return speaker_cli.cmd_speakers(args, _load(args).config)


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.eval_command in speaker_cli.EVAL_TASKS:
        return speaker_cli.cmd_eval(args, _load(args).config)
    result = run_eval_keywords(_load(args).config, args)
    if args.json:
        print(json.dumps(result))
    return 0


COMMANDS = {
    "run": _cmd_run,
    "transcribe": _cmd_transcribe,
    "devices": _cmd_devices,
    "models": _cmd_models,
    "config": _cmd_config_show,
    "bench": _cmd_bench,
    "eval": _cmd_eval,
    "speakers": _cmd_speakers,
}


def _find(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_find(inner, kind) for inner in exc.exceptions)
    return False




def _quiet_transformers() -> None:
    """The per-load "Loading weights" bar is noise in a live terminal; errors still show.
    transformers reads this (huggingface_hub's switch) when it is imported."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "transcribe", "bench", "eval", "speakers"):
        _quiet_transformers()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\nharken: stopped; outputs were flushed and closed.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:  # unwrap TaskGroup groups to find the user-facing error
        if _find(exc, BrokenPipeError):
            # The reader went away (`harken run --jsonl | head`): stop quietly, like cat does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        error = first_user_error(exc)
        if error is None or os.environ.get("HARKEN_DEBUG"):
            raise
        print(f"harken: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
