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
from pathlib import Path
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


def add_bench_parsers(bsub: Any) -> None:
    """`harken bench keywords` and `harken bench translation` (app/bench_tasks.py)."""
    bk = bsub.add_parser("keywords", help="keyword windows scored per second vs real time")
    bk.add_argument("--model", default="sew-d-mid", metavar="ID|DIR|sew-d-mid",
                    help="a checkpoint, or full-size SEW-D mid with random weights")
    bk.add_argument("--hop", type=float, default=0.2, help="seconds between windows")
    bk.add_argument("--batch", type=int, default=16, help="windows per forward pass at most")
    bk.add_argument("--repeats", type=int, default=3, help="raw-throughput repetitions")
    bt = bsub.add_parser("translation", help="translation latency per segment and RTF")
    bt.add_argument("--model", default="xls-r-300m-en-to-15",
                    metavar="ID|DIR|xls-r-300m-en-to-15",
                    help="a checkpoint, or the full-size architecture with random weights")
    bt.add_argument("--translate", type=_languages, default=["de"], metavar="LANGS")
    bt.add_argument("--beams", type=int, default=1, help="beam search width")
    bt.add_argument("--max-new-tokens", type=int, default=48,
                    help="tokens per segment at most (random weights always reach it)")
    bt.add_argument("--max-segments", type=int, default=8, help="segments translated at most")
    for p, seconds in ((bk, 60.0), (bt, 30.0)):
        p.add_argument("--seconds", type=float, default=seconds, help="audio length")
        p.add_argument("--audio", type=Path, help="speech file (default: assets sample)")
        p.add_argument("--device-type", default="auto")
        p.add_argument("--dtype", default="auto",
                       choices=["auto", "float32", "float16", "bfloat16"])
        p.add_argument("--json", action="store_true", help="print only the JSON object")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from harken.app import bench_tasks

    if args.bench_command == "keywords":
        return bench_tasks.bench_keywords(
            model=args.model, seconds=args.seconds, audio=args.audio,
            device_type=args.device_type, dtype=args.dtype, hop_s=args.hop, batch=args.batch,
            repeats=args.repeats, verbose=not args.json)
    return bench_tasks.bench_translation(
        model=args.model, seconds=args.seconds, audio=args.audio, device_type=args.device_type,
        dtype=args.dtype, languages=args.translate, num_beams=args.beams,
        max_new_tokens=args.max_new_tokens, max_segments=args.max_segments,
        verbose=not args.json)


def add_eval_keywords(esub: Any, add_common: Any) -> None:
    """`harken eval keywords DIR [--negatives FILE]...` (app/eval_keywords.py)."""
    ek = esub.add_parser("keywords", help="keyword accuracy per label, confusion matrix, "
                                          "false accepts per hour")
    add_common(ek)
    ek.add_argument("folder", type=Path, metavar="DIR",
                    help="one folder per label (Speech Commands layout)")
    ek.add_argument("--negatives", type=Path, action="append", default=[], metavar="FILE",
                    help="speech without keywords (repeatable): false accepts per hour")
    ek.add_argument("--json", action="store_true", help="print only the JSON object")


def run_eval_keywords(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from harken.app.eval_keywords import evaluate, print_report

    result = asyncio.run(evaluate(config, args.folder, negatives=args.negatives))
    if not args.json:
        print_report(result)
    return result
