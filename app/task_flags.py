"""Command-line flags of the keyword and translation tasks (used by app/cli.py).

    --keywords [yes,no,stop:0.9]   spot keywords (no list: every keyword of the model);
                                   `word:threshold` sets that keyword's threshold
    --keywords-model ID|DIR        audio classification checkpoint
    --translate de[,fr]            translate each final segment (several codes allowed)
    --translation-model ID|DIR     speech encoder-decoder checkpoint

Kept light (no torch import): the CLI parses flags before anything heavy loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

#: flag dest -> (dotted config key, flag spelling), merged into cli.FLAG_KEYS
TASK_FLAG_KEYS = {
    "keywords_enabled": ("keywords.enabled", "--keywords"),
    "keywords_words": ("keywords.words", "--keywords"),
    "keywords_thresholds": ("keywords.thresholds", "--keywords"),
    "keywords_model": ("keywords.model", "--keywords-model"),
    "translate": ("translation.languages", "--translate"),
    "translation_model": ("translation.model", "--translation-model"),
}


def parse_keywords(text: str) -> tuple[list[str], dict[str, float]]:
    """`yes,no,stop:0.9` -> ([yes, no, stop], {stop: 0.9}); "" or "all" -> ([], {})."""
    words: list[str] = []
    thresholds: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item or item.lower() == "all":
            continue
        word, sep, value = item.partition(":")
        word = word.strip()
        if not word:
            raise argparse.ArgumentTypeError(f"empty keyword in {text!r}; write e.g. "
                                             "yes,no,stop:0.9")
        if sep:
            try:
                thresholds[word] = float(value)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"bad threshold {value!r} for {word!r}; write a probability such as "
                    "stop:0.9") from None
        if word not in words:
            words.append(word)
    return words, thresholds


class _KeywordsAction(argparse.Action):
    """--keywords turns the task on and fills the words and thresholds."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        text = values if isinstance(values, str) else ""
        try:
            words, thresholds = parse_keywords(text)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument --keywords: {exc}")
        namespace.keywords_enabled = True
        namespace.keywords_words = words
        namespace.keywords_thresholds = thresholds or None


def _languages(text: str) -> list[str]:
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise argparse.ArgumentTypeError("give at least one language code, e.g. --translate de")
    return codes


def add_task_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("keywords and translation (docs/keywords.md, docs/translation.md)")
    g.add_argument("--keywords", nargs="?", const="", metavar="LIST", action=_KeywordsAction,
                   dest="keywords_words",
                   help="spot keywords: yes,no,stop (word:0.9 sets its threshold); "
                        "no list: every keyword of the model")
    g.add_argument("--keywords-model", metavar="ID|DIR",
                   help="keyword model (audio classification): hub id or folder")
    g.add_argument("--translate", type=_languages, metavar="LANGS",
                   help="translate each final segment into these languages, e.g. de,fr")
    g.add_argument("--translation-model", metavar="ID|DIR",
                   help="translation model (speech encoder-decoder): hub id or folder")
