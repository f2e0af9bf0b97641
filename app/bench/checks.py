"""Bench flags argparse cannot check alone (they need torch or a tokenizer), checked before
any model loads, and model errors that name the bench's own flags.

A mistake in a flag then fails in seconds, not after minutes of building full-size models.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harken.app.bench import shared_audio
from harken.app.bench.architectures import (
    RANDOM_CTC_ARCHS,
    RANDOM_SPEAKER_ARCHS,
    mbart50_sized_tokenizer,
)
from harken.app.bench.tasks import RANDOM_KEYWORD_ARCH, RANDOM_TRANSLATION_ARCH
from harken.app.config import printable
from harken.models.errors import (
    AudioFileError,
    ConfigError,
    ModelError,
    ModelNotFoundError,
    UnsupportedLanguageError,
)
from harken.models.loading import check_head, load_part, resolve_device, resolve_precision
from harken.models.translation import TASK as TRANSLATION_TASK
from harken.models.translation import resolve_languages


def check_bench_args(args: argparse.Namespace) -> None:
    """Raises the HarkenError a bench run would raise late: the device (CUDA present?),
    --precision int8 on CUDA, --step over --window, a missing --audio-root, --translate
    languages the model lacks."""
    device_type = getattr(args, "device_type", None)
    if device_type is not None:
        device = resolve_device(device_type)
        precision = getattr(args, "precision", None)
        if precision is not None:
            resolve_precision(device, precision)
    if args.bench_command == "speakers" and args.step > args.window:
        raise ConfigError(f"--step ({args.step:g}) must not exceed --window "
                          f"({args.window:g}): each analysis adds --step of new speech to a "
                          "--window; lower --step or raise --window")
    if args.bench_command == "precision":
        check_audio_root(args.audio_root)
    if args.bench_command == "all":
        check_languages(RANDOM_TRANSLATION_ARCH, args.translate)
    elif args.bench_command == "translation":
        check_languages(args.model, args.translate)


CONFIG_TOKENS_HINT = " (or map a code to a token with translation.language_tokens in the config)"
RANDOM_TRANSLATION_NAME = (f"the bench's translation model (random weights, "
                           f"{RANDOM_TRANSLATION_ARCH} architecture, mBART-50 languages)")


def check_languages(model: str, codes: list[str]) -> None:
    """UnsupportedLanguageError unless the model (its tokenizer alone) has every code."""
    if model == RANDOM_TRANSLATION_ARCH:
        tokenizer, model_id = mbart50_sized_tokenizer(), f"random:{RANDOM_TRANSLATION_ARCH}"
    else:
        from transformers import AutoModelForSpeechSeq2Seq, AutoTokenizer

        # The head first, as SpeechTranslator.from_pretrained: a checkpoint of another task
        # is named as such, not as one without a tokenizer.
        check_head(AutoModelForSpeechSeq2Seq, model, task=TRANSLATION_TASK)
        tokenizer = load_part(AutoTokenizer, model, part="tokenizer", task=TRANSLATION_TASK)
        model_id = model
    try:
        resolve_languages(codes, tokenizer, model_id=model_id)
    except UnsupportedLanguageError as exc:
        # A bench reads no config (no translation.language_tokens), and its random model has
        # no id a user would know.
        text = str(exc).removesuffix(CONFIG_TOKENS_HINT)
        if model == RANDOM_TRANSLATION_ARCH:
            text = text.replace(repr(model_id), RANDOM_TRANSLATION_NAME, 1)
        if text == str(exc):
            raise
        raise UnsupportedLanguageError(text) from exc


#: bench command -> (model task in models/loading.py messages, the bench's flag, and how a
#: folder is given with it)
MODEL_FLAGS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "captions": (("captions", "--model", "--model /path/to/folder"),),
    "streams": (("captions", "--model", "--model /path/to/folder"),),
    "keywords": (("keywords", "--model", "--model /path/to/folder"),),
    "translation": (("translation", "--model", "--model /path/to/folder"),),
    "speakers": tuple((task, "--architecture", "--architecture SPEAKER_FOLDER,DIARIZATION_FOLDER")
                      for task in ("speaker", "diarization")),
}


def _named(flag: str, folder: str) -> Callable[[re.Match[str]], str]:
    def name(match: re.Match[str]) -> str:
        return folder if match.group(1) else flag
    return name


#: bench command -> its flag's own names (full-size architectures with random weights)
ALIASES: dict[str, tuple[str, ...]] = {
    "captions": RANDOM_CTC_ARCHS,
    "streams": RANDOM_CTC_ARCHS,
    "keywords": (RANDOM_KEYWORD_ARCH,),
    "translation": (RANDOM_TRANSLATION_ARCH,),
    "speakers": RANDOM_SPEAKER_ARCHS,
}


def _not_an_id(command: str, value: str) -> str | None:
    """For a bench model value that is neither a folder nor an owner/name hub id (a
    misspelt alias, `nosuch`): what the flag takes, as one line; else None."""
    aliases = ALIASES.get(command)
    if aliases is None:
        return None
    parts = value.split(",") if command == "speakers" else [value]
    bad = [p for p in parts if "/" not in p.strip() and not Path(p).expanduser().exists()]
    if not bad:
        return None
    flag = "--architecture" if command == "speakers" else "--model"
    close = difflib.get_close_matches(bad[0].strip(), aliases, n=1, cutoff=0.6)
    hint = f"did you mean {flag} {close[0]}? " if close else ""
    checkpoint = "two checkpoints SPEAKER,DIARIZATION (each a folder or a hub id owner/name)" \
        if command == "speakers" else "a checkpoint (a folder, or a hub id owner/name)"
    return (f"{flag} {printable(bad[0])!r} is neither a folder nor a hub id (owner/name); "
            f"{hint}{flag} takes {' or '.join(aliases)} (full-size, random weights) or "
            f"{checkpoint}")


@contextmanager
def bench_model_flags(command: str, value: str | None = None) -> Iterator[None]:
    """Model errors name the run's flags (--captions-model, and the config key); a bench
    takes its model from --model (or --architecture): name that one. `value`: that flag's
    value; a bare name that could not be loaded gets the bench's own names, not
    `harken models pull`."""
    try:
        yield
    except ModelError as exc:
        if isinstance(exc, ModelNotFoundError) and value is not None and \
                (line := _not_an_id(command, value)) is not None:
            raise ModelNotFoundError(line) from exc
        text = str(exc)
        for task, flag, folder in MODEL_FLAGS.get(command, ()):
            # "with --captions-model /path/to/folder" and "with --captions-model (or
            # captions.model in the config)": a bench has no config file. Only after
            # "with ", so a path the user typed is quoted as it is.
            pattern = (rf"(?<=with )--{task}-model( /path/to/folder)?"
                       r"(?: \(or [\w.]+ in the config\))?")
            text = re.sub(pattern, _named(flag, folder), text)
        if text == str(exc):
            raise
        raise type(exc)(text) from exc


def check_audio_root(root: Path | None) -> None:
    """`bench precision --audio-root`: a folder; without the flag, one must be found."""
    if root is None:
        if shared_audio.shared_audio_root() is None:
            raise AudioFileError(
                f"no shared real-speech folder found (${shared_audio.ENV}, or ../shared/audio "
                f"beside {printable(str(shared_audio.ROOT))} or its parent folder); pass "
                "--audio-root /path/to/shared/audio")
        return
    if not root.is_dir():
        where = "" if root.is_absolute() else \
            f" (relative to the current folder {printable(str(Path.cwd()))})"
        raise AudioFileError(f"--audio-root {printable(str(root))} is not a folder{where}; "
                             "pass the real path of the shared real-speech folder, e.g. "
                             "--audio-root /path/to/shared/audio")
