"""The `harken` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import select
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harken.app import flags
from harken.app.config import printable
from harken.engine.sources.file import FileSource
from harken.models.errors import ConfigError, SettingsError, first_user_error

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd stopping the daemon, `kill`): stop exactly as on Ctrl-C, so outputs
    are flushed and closed and the embedded broker is stopped with the run."""


_TERM_RECEIVED = threading.Event()


def _terminate(signum: int, frame: Any) -> None:
    _TERM_RECEIVED.set()
    on_sigint = signal.getsignal(signal.SIGINT)
    if callable(on_sigint) and on_sigint is not signal.default_int_handler:
        # asyncio.run's own Ctrl-C handler: it cancels the main task, lets every task
        # clean up, then raises KeyboardInterrupt. Raising here instead would land in
        # whichever task happens to run and leave the others' exceptions unretrieved.
        on_sigint(signal.SIGINT, frame)
        return
    raise Terminated
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for `cmd | head`

#: command -> the module whose run(args) carries it out, imported only when that command
#: runs: `harken --help` and a bad flag never load the model stack.
COMMANDS = {name: f"harken.app.commands.{name}"
            for name in ("run", "transcribe", "devices", "models", "config", "bench", "eval",
                         "speakers", "tune")}


#: commands whose inputs and configuration are checked before their module (and with it
#: torch and the models) is imported: a bad file or setting fails in a blink
PREFLIGHT = ("run", "transcribe")


def preflight(args: argparse.Namespace) -> None:
    """Rejects flags that would do nothing, loads the configuration and opens every input
    file (and a benchmark's --audio) once, then closes them."""
    check_flag_combinations(args)
    if args.command in PREFLIGHT:
        check_mqtt_flags(args, flags.load(args).config.mqtt.url)
    paths = [*([args.input] if isinstance(getattr(args, "input", None), Path) else []),
             *getattr(args, "files", []),
             *([args.audio] if isinstance(getattr(args, "audio", None), Path) else [])]
    check_files(paths)


def check_flag_combinations(args: argparse.Namespace) -> None:
    """Flags that would be ignored in silence are mistakes: say which and what to do."""
    if args.command != "run":
        return
    if args.format is not None and args.out is None:
        raise ConfigError("--format chooses the files written with --out: add --out DIR "
                          "(or drop --format)")
    if args.device is not None and args.input is not None:
        raise ConfigError("--device picks a microphone, but --input reads "
                          f"{args.input}: drop one of them")


#: flags that only shape what the MQTT sink publishes
MQTT_ONLY_FLAGS = ("mqtt_prefix", "site", "hermes", "ha_discovery", "mqtt_ca", "mqtt_cert",
                   "mqtt_key", "mqtt_password_file")


def check_mqtt_flags(args: argparse.Namespace, url: str) -> None:
    """MQTT flags without a broker (no --mqtt, no mqtt.url, no mqtt:// input: results then
    go back to the satellites' broker) would do nothing."""
    given = [flags.FLAG_KEYS[dest][1] for dest in MQTT_ONLY_FLAGS
             if getattr(args, dest, None) not in (None, False)]
    satellites = isinstance(getattr(args, "input", None), str)  # an mqtt:// URL (input_arg)
    if given and not url and not satellites:
        raise ConfigError(f"{', '.join(given)} shape{'s' if len(given) == 1 else ''} what is "
                          "published over MQTT, but no broker is set: add --mqtt URL (or "
                          "--mqtt embedded), or drop them")


def check_files(paths: Sequence[Path]) -> None:
    """Opens and closes each file: a missing, empty or non-audio one raises AudioFileError."""

    async def check() -> None:
        for path in paths:
            async with FileSource(path=path, stream_id="check"):
                pass

    asyncio.run(check())


def _find(exc: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(exc, kind):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_find(inner, kind) for inner in exc.exceptions)
    return False


def _writable(stream: Any) -> bool:
    """Whether `stream` takes a line now, without waiting (a terminal that is not read,
    a full pipe: no)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # replaced (tests) or closed
        return stream is not None
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(mask & select.POLLOUT for _fd, mask in poller.poll(0))


def _quiet_transformers() -> None:
    """The per-load "Loading weights" bar is noise in a live terminal; errors still show.
    transformers reads this (huggingface_hub's switch) when it is imported."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = flags.build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `harken`: what there is to do, and success
        parser.print_help()
        return 0
    if args.command in ("run", "transcribe", "bench", "eval", "speakers", "tune"):
        _quiet_transformers()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        preflight(args)
        command = importlib.import_module(COMMANDS[args.command])
        code: int = command.run(args)
        return code
    except KeyboardInterrupt as exc:
        # After a hangup the terminal may be gone, or no longer read (a frozen link, where
        # a write would wait for ever): then the stop goes on without a word.
        if _writable(sys.stderr):
            with contextlib.suppress(OSError):
                print("\nharken: stopped; outputs were flushed and closed.", file=sys.stderr)
        if isinstance(exc, Terminated) or _TERM_RECEIVED.is_set():
            return EXIT_TERMINATED
        signum = getattr(exc, "signum", None)  # app/session.py Stopped: 128 + the signal
        return 128 + signum if isinstance(signum, int) else EXIT_INTERRUPTED
    except BaseException as exc:  # unwrap TaskGroup groups to find the user-facing error
        if _find(exc, BrokenPipeError):
            # The reader went away (`harken run --jsonl | head`): stop quietly, like cat does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        error = first_user_error(exc)
        if error is None or os.environ.get("HARKEN_DEBUG"):
            raise
        # Several bad settings are one self-contained line each (app/config.py); any other
        # line break or escape in a message is the user's (a path, a key) and is shown
        # escaped, never obeyed.
        lines = error.lines if isinstance(error, SettingsError) else (str(error),)
        for line in lines:
            print(f"harken: error: {printable(line)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
