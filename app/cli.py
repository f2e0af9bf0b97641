"""The `harken` command line."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from harken.app import flags
from harken.models.errors import first_user_error

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for `cmd | head`

#: command -> the module whose run(args) carries it out, imported only when that command
#: runs: `harken --help` and a bad flag never load the model stack.
COMMANDS = {name: f"harken.app.commands.{name}"
            for name in ("run", "transcribe", "devices", "models", "config", "bench", "eval",
                         "speakers", "tune")}


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
    args = flags.build_parser().parse_args(argv)
    if args.command in ("run", "transcribe", "bench", "eval", "speakers", "tune"):
        _quiet_transformers()
    try:
        command = importlib.import_module(COMMANDS[args.command])
        code: int = command.run(args)
        return code
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
