"""`harken run`: live results from the microphone, a file or MQTT satellites."""

from __future__ import annotations

import argparse
import asyncio
import sys

from harken.app import flags
from harken.app.commands.transcribe import no_speech_note
from harken.app.session import (
    Session,
    check_new,
    check_source,
    file_source,
    mic_source,
    mqtt_setup,
    output_paths,
    result_files,
    terminal_sink,
)
from harken.app.tasks.refine import check_refine_flags, with_refine_resolved
from harken.app.tui.app import run_tui
from harken.models.errors import HarkenError


def use_tui(args: argparse.Namespace) -> bool:
    """`harken run` opens the terminal app only on a terminal, without --jsonl/--no-tui.
    Its keys come from stdin: with stdin not a terminal (`< /dev/null`) it could not be
    quit, and Textual's input thread would read end-of-file at 100% CPU."""
    return not args.jsonl and not args.no_tui and sys.stdout.isatty() and sys.stdin.isatty()


def _ready() -> None:
    """Satellites: nothing prints before the first caption, so say when frames are heard
    (the terminal app shows it in its status line instead)."""
    print("harken: listening for satellite audio; captions print as sites speak",
          file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    settings = flags.load(args)
    loaded = settings.config
    check_refine_flags(language=args.refine_language, guard=args.refine_guard, config=loaded)
    config = with_refine_resolved(loaded)
    mqtt_input = args.input if isinstance(args.input, str) else None
    mqtt = mqtt_setup(config, input_url=mqtt_input, live=not args.fast)
    if mqtt_input is not None:
        if args.fast:
            raise HarkenError("--fast needs --input FILE (satellites stream in real time)")
        stream_id = "satellites"
        source = mqtt.source(on_subscribed=None if use_tui(args) else _ready)
    elif args.input is not None:
        stream_id = args.input.stem or "file"
        source = file_source(args.input, stream_id=stream_id,
                                     realtime=not args.fast, config=config)
    else:
        if args.fast:
            raise HarkenError("--fast needs --input FILE (a microphone runs in real time)")
        stream_id = "mic"
        source = mic_source(config, stream_id=stream_id)
        asyncio.run(check_source(source))
    # Satellites: the first site's first caption names its site too, not only the lines
    # after a second site has spoken.
    satellites = mqtt_input is not None
    # Files only where the user named a folder (--out, or output.dir in a config file or
    # variable): the default "." would litter wherever a microphone session starts.
    writes_files = settings.origins.get("output.dir", "default") != "default"
    files = result_files(config, stem=stream_id, per_stream=satellites) if writes_files else []
    check_new(config, output_paths(files))  # before the model loads and before any write
    if use_tui(args):
        with mqtt.broker():
            return run_tui(config, stem=stream_id, source=source,
                           file_sinks=[*files, *mqtt.sinks()], live=not args.fast,
                           show_streams=satellites)
    sinks = [terminal_sink(jsonl=args.jsonl, show_stream=satellites), *files, *mqtt.sinks()]
    session = Session(config=config, sources=[source], sinks=sinks, live=not args.fast)
    with mqtt.broker():
        engine = asyncio.run(session.run_stoppable())
    if args.input is not None and mqtt_input is None and \
            (note := no_speech_note(engine, name=str(args.input), config=config)):
        print(note, file=sys.stderr)
    return 0
