"""Every command-line flag, in one table: the parser of each command and, for the flags
that set configuration, the config key each one overrides (FLAG_KEYS).

Kept light (no torch import): the CLI parses flags before anything heavy loads, so a bad
flag fails in a blink.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from harken.app.config import LoadedConfig, load_config, printable

DTYPES = ["auto", "float32", "float16", "bfloat16"]
VAD_ENGINES = ["webrtc", "silero", "both"]  # engine/vad.py VadEngine
PRECISIONS = ["auto", "fp32", "int8"]
PRECISION_HELP = "int8: dynamic int8 Linear layers (CPU only); auto: int8 on CPU, fp32 on CUDA"


def add_precision_flags(p: argparse.ArgumentParser | Any, *, threads: bool = True) -> None:
    """--precision (and the thread budgets) of the compute section (docs/cpu.md)."""
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    if threads:
        p.add_argument("--inference-threads", type=int, metavar="N",
                       help="torch threads of the inference worker (0: auto)")
        p.add_argument("--generation-threads", type=int, metavar="N",
                       help="torch threads of translation generation (0: auto)")

#: flag dest -> (dotted config key, flag spelling): flags override the file and environment
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "captions_model": ("captions.model", "--captions-model"),
    "device_type": ("compute.device_type", "--device-type"),
    "dtype": ("compute.dtype", "--dtype"),
    "precision": ("compute.precision", "--precision"),
    "inference_threads": ("compute.inference_threads", "--inference-threads"),
    "generation_threads": ("compute.generation_threads", "--generation-threads"),
    "device": ("audio.device", "--device"),
    "hop": ("captions.hop_s", "--hop"),
    "left_context": ("captions.left_context_s", "--left-context"),
    "right_context": ("captions.right_context_s", "--right-context"),
    "vad_aggressiveness": ("vad.aggressiveness", "--vad-aggressiveness"),
    "vad_engine": ("vad.engine", "--vad-engine"),
    "vad_threads": ("vad.threads", "--vad-threads"),
    "max_segment": ("vad.max_segment_s", "--max-segment"),
    "out": ("output.dir", "--out"),
    "format": ("output.formats", "--format"),
    "overwrite": ("output.overwrite", "--overwrite"),
    "mqtt": ("mqtt.url", "--mqtt"),
    "mqtt_prefix": ("mqtt.prefix", "--mqtt-prefix"),
    "site": ("mqtt.site", "--site"),
    "hermes": ("mqtt.hermes", "--hermes"),
    "ha_discovery": ("mqtt.ha_discovery", "--ha-discovery"),
    "mqtt_ca": ("mqtt.ca_file", "--mqtt-ca"),
    "mqtt_cert": ("mqtt.cert_file", "--mqtt-cert"),
    "mqtt_key": ("mqtt.key_file", "--mqtt-key"),
    "mqtt_password_file": ("mqtt.password_file", "--mqtt-password-file"),
    # keywords and translation
    "keywords_enabled": ("keywords.enabled", "--keywords"),
    "keywords_words": ("keywords.words", "--keywords"),
    "keywords_thresholds": ("keywords.thresholds", "--keywords"),
    "keywords_model": ("keywords.model", "--keywords-model"),
    "translate": ("translation.languages", "--translate"),
    "translation_model": ("translation.model", "--translation-model"),
    "refine_model": ("refine.model", "--refine-model"),
    "refine_language": ("refine.language", "--refine-language"),
    "refine_guard": ("refine.guard", "--no-refine-guard"),
    # speakers
    "diarize": ("speakers.enabled", "--diarize"),
    "speaker_model": ("speakers.model", "--speaker-model"),
    "diarization_model": ("speakers.diarization_model", "--diarization-model"),
    "speaker_store": ("speakers.store", "--speaker-store"),
    "speaker_threshold": ("speakers.threshold", "--speaker-threshold"),
}


def config_overrides(flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Flag values -> (nested config overrides, dotted key -> flag spelling); unset flags
    (None) are left out."""
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


def load(args: argparse.Namespace) -> LoadedConfig:
    """The effective configuration: defaults < file < environment < these flags."""
    flags, names = config_overrides(vars(args))
    return load_config(getattr(args, "config", None), flags=flags, flag_names=names)


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
                threshold = float(value)
            except ValueError:
                threshold = math.nan
            # The range of keywords.thresholds, checked here so the error names the flag.
            if not 0 < threshold <= 1:
                raise argparse.ArgumentTypeError(
                    f"bad threshold {value.strip()!r} for {word!r}; write WORD:P with a "
                    "probability above 0 and at most 1, e.g. stop:0.9")
            thresholds[word] = threshold
        if word in words:  # which of two thresholds was meant is the user's call
            raise argparse.ArgumentTypeError(
                f"keyword {word!r} is given twice in {text!r}; give each keyword once")
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


def count(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `lo` to `hi`, else one line naming the range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {value}")
        return value
    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _within(low: float, high: float, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in [low, high] (`above`: low itself excluded), as the
    matching config key accepts."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
        ok = math.isfinite(value) and (value > low if above else value >= low) \
            and value <= high
        if not ok:
            bound = f"more than {low:g}" if above else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound} and at most {high:g}, got {text}")
        return value
    return parse


def _stream_counts(text: str) -> list[int]:
    one = count(1, 4096)
    parts = text.split(",")
    if not text.strip() or any(not p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"give N or a list N,N,..., got {text!r}")
    return [one(p) for p in parts]


def device_type(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N (compute.device_type), checked without
    torch; whether CUDA is there is checked before the models load (app/bench/checks.py)."""
    choice = text.strip().lower()
    if choice in ("auto", "cpu", "cuda") or (choice.startswith("cuda:") and choice[5:].isdigit()):
        return choice
    raise argparse.ArgumentTypeError(f"unknown device type {text!r}; use auto, cpu, cuda or "
                                     "cuda:N")


def _languages(text: str) -> list[str]:
    codes = [c.strip() for c in text.split(",")]
    if not any(codes):
        raise argparse.ArgumentTypeError("give at least one language code, e.g. --translate de")
    if not all(codes):
        raise argparse.ArgumentTypeError(f"an empty language code in {text!r}; separate the "
                                         "codes with single commas, e.g. --translate de,fr")
    return codes


def _language_code(text: str) -> str:
    code = text.strip()
    if not (2 <= len(code) <= 3 and code.isascii() and code.isalpha()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a language code; give the 2 or 3 letter code the refine model "
            "knows, e.g. en, de or yue")
    return code.lower()


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
    g.add_argument("--refine-model", metavar="ID|DIR|none",
                   help="re-decode each caption final with this sequence-to-sequence model "
                        "(Whisper...): hub id or folder; default auto: "
                        "openai/whisper-large-v3-turbo on CUDA, none on CPU (docs/refine.md)")
    g.add_argument("--refine-language", type=_language_code, metavar="CODE",
                   help="language forced on the refine model (default en)")
    g.add_argument("--no-refine-guard", dest="refine_guard", action="store_false",
                   default=None, help="accept every non-empty refinement (no hallucination "
                                      "guard against the CTC text)")


def add_bench_parsers(bsub: Any) -> None:
    """`harken bench keywords` and `harken bench translation` (app/bench/tasks.py)."""
    bk = bsub.add_parser("keywords", help="keyword windows scored per second vs real time")
    bk.add_argument("--model", default="sew-d-mid", metavar="ID|DIR|sew-d-mid",
                    help="a checkpoint, or full-size SEW-D mid with random weights")
    bk.add_argument("--hop", type=_within(0.01, 10), default=0.2, metavar="S",
                    help="seconds between windows (the range of keywords.hop_s)")
    bk.add_argument("--batch", type=count(1, 1024), default=16,
                    help="windows per forward pass at most")
    bk.add_argument("--repeats", type=count(1, 100), default=3, help="raw-throughput repetitions")
    bt = bsub.add_parser("translation", help="translation latency per segment and RTF")
    bt.add_argument("--model", default="xls-r-300m-en-to-15",
                    metavar="ID|DIR|xls-r-300m-en-to-15",
                    help="a checkpoint, or the full-size architecture with random weights")
    bt.add_argument("--translate", type=_languages, default=["de"], metavar="LANGS")
    bt.add_argument("--beams", type=count(1, 16), default=1, help="beam search width")
    bt.add_argument("--max-new-tokens", type=count(1, 448), default=48,
                    help="tokens per segment at most; fewer for short segments (12/s + 16), "
                         "which random weights always reach")
    bt.add_argument("--max-segments", type=count(1, 10_000), default=8,
                    help="segments translated at most")
    for p, length in ((bk, 60.0), (bt, 30.0)):
        p.add_argument("--seconds", type=bench_seconds, default=length, metavar="S",
                       help="audio length (1 to 3600)")
        p.add_argument("--audio", type=Path, help="speech file (default: assets sample)")
        p.add_argument("--device-type", type=device_type, default="auto",
                       metavar="auto|cpu|cuda[:N]", help="compute device")
        p.add_argument("--dtype", default="auto",
                       choices=["auto", "float32", "float16", "bfloat16"])
        p.add_argument("--json", action="store_true", help="print only the JSON object")


def _model_flags(p: argparse.ArgumentParser | Any, *, diarization: bool = True) -> None:
    p.add_argument("--speaker-model", metavar="ID|DIR",
                   help="x-vector speaker model (default microsoft/unispeech-sat-base-plus-sv)")
    if diarization:
        p.add_argument("--diarization-model", metavar="ID|DIR",
                       help="segmentation model (default microsoft/unispeech-sat-base-plus-sd)")
    p.add_argument("--speaker-store", type=Path, metavar="FILE",
                   help="voiceprint database (default: voiceprints.sqlite in the user data dir)")
    p.add_argument("--speaker-threshold", type=float, metavar="SIM",
                   help="cosine similarity to name/accept an enrolled speaker (default: "
                        "calibrated per model, docs/speakers.md)")


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
    add_precision_flags(p, threads=False)


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


def add_tune_parser(sub: Any) -> None:
    """`harken tune diarization|speakers` (app/tune/, app/commands/tune.py)."""
    tp = sub.add_parser("tune", help="calibrate the speaker thresholds on your labelled audio "
                                     "and save them in your config")
    tsub = tp.add_subparsers(dest="tune_command", required=True, metavar="TASK")
    td = tsub.add_parser("diarization", help="tau_active, rho_update, delta_new that lower the "
                                             "DER (Optuna), per model")
    td.add_argument("pairs", nargs="+", type=Path, metavar="AUDIO RTTM",
                    help="audio files, each followed by its RTTM")
    td.add_argument("--trials", type=count(1, 100_000), default=50,
                    help="Optuna trials (default 50)")
    td.add_argument("--collar", type=_seconds, default=0.25, metavar="S",
                    help="forgiveness around reference boundaries (default 0.25)")
    td.add_argument("--seed", type=int, default=0, help="sampler seed (same seed, same search)")
    ts = tsub.add_parser("speakers", help="the speaker-ID threshold at the equal error rate")
    ts.add_argument("dir", type=Path, metavar="DIR", help="DIR/<speaker>/<clip> audio")
    for p in (td, ts):
        p.add_argument("--no-write", action="store_true",
                       help="print the result, leave the config file alone")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        _compute_flags(p)
        _model_flags(p, diarization=p is td)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.0 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10 seconds, got {text}")
    return value


def add_eval_vad(esub: Any) -> None:
    """`harken eval vad AUDIO RTTM` (app/eval/vad.py)."""
    ev = esub.add_parser("vad", help="speech detection error of the VAD against an RTTM")
    ev.add_argument("audio", type=Path, metavar="AUDIO")
    ev.add_argument("rttm", type=Path, metavar="RTTM")
    ev.add_argument("--collar", type=_seconds, default=0.0, metavar="S",
                    help="forgiveness around reference boundaries (default 0: strict)")
    ev.add_argument("--engine", dest="vad_engine", choices=VAD_ENGINES,
                    help="VAD engine to score (default: the configured one, both)")
    ev.add_argument("--config", type=Path, help="TOML config file (default: user config dir)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")


def add_bench(bsub: Any) -> None:
    bs = bsub.add_parser("speakers", help="live diarization step time, RTF and memory")
    bs.add_argument("--architecture", default="base", metavar="base|large|SV,SD",
                    help="full-size random UniSpeech-SAT, or two checkpoints")
    bs.add_argument("--minutes", type=seconds, default=1.0, help="audio length")
    bs.add_argument("--audio", type=Path, help="speech file to use (default: assets sample)")
    bs.add_argument("--device-type", type=device_type, default="auto",
                    metavar="auto|cpu|cuda[:N]", help="compute device")
    bs.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    # The ranges of speakers.window_s and speakers.step_s.
    bs.add_argument("--window", type=_within(1, 30), default=5.0, metavar="S",
                    help="speech each analysis sees")
    bs.add_argument("--step", type=_within(0.1, 5), default=0.5, metavar="S",
                    help="new speech between analyses, at most --window")
    bs.add_argument("--json", action="store_true", help="print only the JSON object")


def add_load_bench_parsers(bsub: Any) -> None:
    """`bench all` and `bench streams` (app/bench/all.py, app/bench/streams.py, docs/cpu.md)."""
    ba = bsub.add_parser("all", help="the five tasks together on one real-time speech stream")
    ba.add_argument("--seconds", type=seconds, default=60.0, help="audio length")
    ba.add_argument("--captions-arch", default="hubert-base",
                    choices=["hubert-base", "hubert-large"],
                    help="captions architecture (random weights)")
    ba.add_argument("--translate", type=_languages, default=["de"], metavar="LANGS")
    ba.add_argument("--max-new-tokens", type=count(1, 448), default=48,
                    help="tokens per translated segment at most; fewer for short segments "
                         "(12/s + 16), which random weights always reach")
    ba.add_argument("--fast", action="store_true",
                    help="unpaced, nothing skipped: cpu_rtf is each task's full demand")
    ba.add_argument("--generation-threads", type=count(0, 256), default=0, metavar="N",
                    help="torch threads of translation generation (0: auto)")
    bst = bsub.add_parser("streams", help="N concurrent streams through the batching worker")
    bst.add_argument("--streams", type=_stream_counts, default=[1], metavar="N[,N...]",
                     help="concurrent streams; a list runs each in turn, models loaded once "
                          "(with --find-capacity: the first N tried)")
    bst.add_argument("--find-capacity", action="store_true",
                     help="largest N that keeps up: final p95 < 0.5 s, VAD-split "
                          "final p95 < 0.5 s + vad.split_search_s, no missing finals, "
                          "no merged caption steps")
    bst.add_argument("--max-streams", type=count(1, 4096), default=512, metavar="N",
                     help="--find-capacity tries no more streams than this")
    bst.add_argument("--tasks", default="captions", metavar="captions[,speakers,keywords]")
    bst.add_argument("--model", default="hubert-large",
                     metavar="ID|DIR|hubert-base|hubert-large",
                     help="captions checkpoint, or a full-size architecture, random weights")
    bst.add_argument("--seconds", type=seconds, default=30.0, help="audio per stream")
    bst.add_argument("--max-batch", type=count(1, 1024), default=64,
                     help="windows per forward pass")
    bst.add_argument("--vad-engine", choices=VAD_ENGINES, default="both",
                     help="the streams' VAD")
    bst.add_argument("--vad-threads", type=count(0, 64), default=0, metavar="N",
                     help="run the streams' VADs on N threads off the event loop (0: on it)")
    for p in (ba, bst):
        p.add_argument("--inference-threads", type=count(0, 256), default=0, metavar="N",
                       help="torch threads of the inference worker (0: auto)")
    bp = bsub.add_parser("precision", help="int8 vs fp32 per task on real speech: fidelity "
                                           "and speed-up")
    bp.add_argument("--tasks", default="captions,speakers,diarization,keywords,translation",
                    metavar="LIST", help="captions,speakers,diarization,keywords,translation")
    bp.add_argument("--audio-root", type=Path, metavar="DIR",
                    help="the shared real-speech folder (default: $HARKEN_SHARED_AUDIO, else "
                         "../shared/audio beside the project or its parent folder)")
    bp.add_argument("--threads", type=count(0, 256), default=0, metavar="N",
                    help="torch threads (0: torch's default)")
    bp.add_argument("--max-new-tokens", type=count(1, 448), default=24,
                    help="tokens per translated segment")
    bp.add_argument("--json", action="store_true", help="print only the JSON object")
    for p in (ba, bst):
        p.add_argument("--audio", type=Path,
                       help="speech file (default: ../shared/audio conversation, else the "
                            "assets sample)")
        p.add_argument("--device-type", type=device_type, default="auto",
                       metavar="auto|cpu|cuda[:N]", help="compute device")
        p.add_argument("--dtype", default="auto", choices=DTYPES)
        p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
        p.add_argument("--json", action="store_true", help="print only the JSON object")


def add_bench_soak(bsub: Any) -> None:
    """`harken bench soak` (app/bench/soak.py)."""
    bs = bsub.add_parser("soak", help="all tasks for a long run over a restarting broker "
                                      "with a hostile publisher: memory, lag, lost finals")
    bs.add_argument("--minutes", type=_positive, default=60.0, help="run length")
    bs.add_argument("--satellites", type=count(0, 64), default=2, help="synthetic satellites")
    bs.add_argument("--restart-every", type=_positive, default=180.0, metavar="S",
                    help="seconds between broker restarts")
    bs.add_argument("--audio", type=Path, help="speech file to loop (default: assets sample)")
    bs.add_argument("--heap-trim", type=trim_interval, default=None, metavar="S",
                    help="seconds between heap trims (compute.heap_trim_s; 0: none, the "
                         "'before' of docs/memory.md)")
    bs.add_argument("--json", action="store_true", help="print only the JSON object")


def add_eval_keywords(esub: Any, add_common: Any) -> None:
    """`harken eval keywords DIR [--negatives FILE]...` (app/eval/keywords.py)."""
    ek = esub.add_parser("keywords", help="keyword accuracy per label, confusion matrix, "
                                          "false accepts per hour")
    add_common(ek)
    ek.add_argument("folder", type=Path, metavar="DIR",
                    help="one folder per label (Speech Commands layout)")
    ek.add_argument("--negatives", type=Path, action="append", default=[], metavar="FILE",
                    help="speech without keywords (repeatable): false accepts per hour")
    ek.add_argument("--json", action="store_true", help="print only the JSON object")


def add_eval_captions(esub: Any) -> None:
    """`harken eval captions DIR|MANIFEST [--refine-model ID|DIR]` (app/eval/captions.py)."""
    ec = esub.add_parser("captions", help="WER/CER of streaming CTC finals, whole-segment "
                                          "CTC and refined finals; refined-final latency")
    add_common(ec, random_archs=True)
    ec.add_argument("path", type=Path, metavar="DIR|MANIFEST",
                    help="audio with transcripts (LibriSpeech *.trans.txt, LJ Speech "
                         "metadata.csv, NAME.txt beside NAME.wav) or AUDIO<TAB>TEXT lines")
    ec.add_argument("--no-guard", dest="refine_guard", action="store_false", default=None,
                    help="the same as --no-refine-guard")
    ec.add_argument("--fast", action="store_true",
                    help="feed audio as fast as it decodes (no latency figures)")
    ec.add_argument("--json", action="store_true", help="print only the JSON object")


def add_common(p: argparse.ArgumentParser, *, random_archs: bool = False) -> None:
    """`random_archs`: --captions-model also takes the bench's full-size random
    architectures (`harken eval captions`)."""
    p.add_argument("--config", type=Path, help="TOML config file (default: user config dir)")
    if random_archs:
        p.add_argument("--captions-model", metavar="ID|DIR|hubert-base|hubert-large",
                       help="CTC model: hub id or folder, or that architecture with random "
                            "weights")
    else:
        p.add_argument("--captions-model", metavar="ID|DIR", help="CTC model: hub id or folder")
    p.add_argument("--device-type", metavar="auto|cpu|cuda[:N]", help="compute device")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--hop", type=float, metavar="S", help="seconds between partial updates")
    p.add_argument("--left-context", type=float, metavar="S")
    p.add_argument("--right-context", type=float, metavar="S")
    p.add_argument("--vad-aggressiveness", type=int, choices=[0, 1, 2, 3])
    p.add_argument("--vad-engine", choices=VAD_ENGINES,
                   help="speech detector: both (default: webrtcvad onsets confirmed by "
                        "silero-vad), webrtc or silero alone (docs/vad.md)")
    p.add_argument("--vad-threads", type=count(0, 64), metavar="N",
                   help="run the streams' VADs on N threads off the event loop (many "
                        "satellites; 0: on the loop)")
    p.add_argument("--max-segment", type=float, metavar="S", help="split longer speech")
    add_precision_flags(p)
    add_task_flags(p)
    add_diarize_flags(p)


def input_arg(text: str) -> Path | str:
    """A file path, or an mqtt[s]:// URL kept as text (a Path would fold its '//')."""
    return text if text.startswith(("mqtt://", "mqtts://")) else Path(text)


def add_mqtt(p: argparse.ArgumentParser) -> None:
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


def formats(text: str) -> list[str]:
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    if not chosen:
        raise argparse.ArgumentTypeError("give at least one format, e.g. --format srt,vtt "
                                         "(from srt, vtt, jsonl, txt, rttm)")
    return chosen


def seconds(text: str) -> float:
    """A positive, finite length of audio in seconds (or minutes) for the benchmarks."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}; e.g. 30")
    return value


#: s: the audio a bench synthesises or reads is held in memory whole (as bench streams)
MIN_BENCH_S, MAX_BENCH_S = 1.0, 3600.0


def bench_seconds(text: str) -> float:
    """A bench's audio length: from MIN_BENCH_S to MAX_BENCH_S (an hour), else one line."""
    value = seconds(text)
    if not MIN_BENCH_S <= value <= MAX_BENCH_S:
        raise argparse.ArgumentTypeError(f"must be from {MIN_BENCH_S:g} to {MAX_BENCH_S:g} "
                                         f"seconds, got {text}; e.g. 30")
    return value


def trim_interval(text: str) -> float:
    """Seconds between heap trims: 0 (none) or 1 to 3600."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value == 0 or 1 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"must be 0 (none) or from 1 to 3600, got {text}")
    return value


class Parser(argparse.ArgumentParser):
    """Every parser and subparser without prefix matching: `--keywords` must never be read as
    `--keywords-model`, nor a typo as some longer flag (subparsers are made of this class)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "allow_abbrev": False})

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra and self._subparsers is None:
            # A command's own parser names what it did not know (argparse would leave it to
            # the top-level parser, whose usage says nothing about this command's flags).
            self.error(f"unrecognized arguments: {' '.join(extra)}{self._suggestion(extra)}")
        return parsed, extra

    def _suggestion(self, extra: Sequence[str]) -> str:
        flags = [opt for action in self._actions for opt in action.option_strings]
        for arg in extra:
            close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.6)
            if arg.startswith("-") and close:
                return f" (did you mean {close[0]}?)"
        return ""

    def error(self, message: str) -> NoReturn:
        """One line that names the fix, not argparse's usage block."""
        # printable: a flag value with a newline or an ANSI escape stays on this one line
        self.exit(2, f"{self.prog}: error: {printable(message)}; see `{self.prog} --help`\n")


def version() -> str:
    try:
        return importlib.metadata.version("harken")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command. A bare `harken` has no command: cli.main prints the help."""
    parser = Parser(
        prog="harken", description="Real-time listening engine: live captions from speech.")
    parser.add_argument("--version", action="version", version=f"harken {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="live captions from the microphone or a file")
    add_common(run)
    run.add_argument("--input", metavar="FILE|URL", type=input_arg,
                     help="read a file (paced in real time unless --fast) instead of the mic, "
                          "or satellite audio: mqtt://host/hermes/audioServer/+/audioFrame")
    run.add_argument("--fast", action="store_true", help="process the file as fast as possible")
    run.add_argument("--device", metavar="N|NAME", help="input device (see `harken devices`)")
    run.add_argument("--jsonl", action="store_true", help="print one JSON event per line")
    run.add_argument("--no-tui", action="store_true",
                     help="plain printed captions instead of the terminal app")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="also write transcript files here (or set output.dir)")
    run.add_argument("--overwrite", action="store_true", default=None,
                     help="replace output files that already exist (default: refuse)")
    run.add_argument("--format", type=formats, metavar="LIST",
                     help="file formats with --out: srt,vtt,jsonl,txt,rttm")
    add_mqtt(run)

    tr = sub.add_parser("transcribe", help="transcribe files offline (same engine, no pacing)")
    add_common(tr)
    tr.add_argument("files", nargs="+", type=Path, metavar="FILE")
    tr.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: .)")
    tr.add_argument("--overwrite", action="store_true", default=None,
                    help="replace output files that already exist (default: refuse)")
    tr.add_argument("--format", type=formats, metavar="LIST", help="srt,vtt,jsonl,txt,rttm")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("devices", help="list audio input devices")

    models = sub.add_parser("models", help="list or download the configured models")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, text in (("list", "configured models and whether they are cached"),
                       ("pull", "download models into the HF cache: the ones given, else the "
                                "configured ones")):
        mp = msub.add_parser(name, help=text)
        if name == "pull":
            mp.add_argument("ids", nargs="*", metavar="ID",
                            help="hub ids to download (default: the configured models)")
        mp.add_argument("--config", type=Path,
                        help="TOML config file (default: user config dir)")
        mp.add_argument("--captions-model", metavar="ID|DIR")
        mp.add_argument("--keywords-model", metavar="ID|DIR")
        mp.add_argument("--translation-model", metavar="ID|DIR")
        mp.add_argument("--refine-model", metavar="ID|DIR")
        mp.add_argument("--diarize", action="store_true", default=None,
                        help="include the speaker and diarization models")

    cfg = sub.add_parser("config", help="show the effective configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = csub.add_parser("show", help="every setting, its value and where it came from")
    add_common(show)
    show.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="TASK")
    bc = bsub.add_parser("captions", help="streaming engine vs the transformers ASR pipeline")
    bc.add_argument("--model", default="hubert-base",
                    metavar="ID|DIR|hubert-base|hubert-large",
                    help="a checkpoint, or a full-size architecture with random weights")
    bc.add_argument("--seconds", type=bench_seconds, default=60.0, metavar="S",
                    help="audio length (1 to 3600)")
    bc.add_argument("--audio", type=Path, help="speech file to use (default: assets sample)")
    bc.add_argument("--device-type", type=device_type, default="auto",
                    metavar="auto|cpu|cuda[:N]", help="compute device")
    bc.add_argument("--dtype", default="auto", choices=DTYPES)
    # The ranges of the captions.* config keys they stand for.
    bc.add_argument("--hop", type=_within(0.05, 5, above=True), default=0.5, metavar="S",
                    help="seconds between partial updates")
    bc.add_argument("--left-context", type=_within(0, 60), default=2.0, metavar="S",
                    help="seconds of left context re-encoded")
    bc.add_argument("--right-context", type=_within(0, 10), default=0.5, metavar="S",
                    help="seconds of context a frame needs to become final")
    bc.add_argument("--fast", action="store_true",
                    help="feed the engine unpaced (latencies then include queueing)")
    bc.add_argument("--json", action="store_true", help="print only the JSON object")
    add_bench_parsers(bsub)
    add_bench(bsub)
    add_load_bench_parsers(bsub)
    add_bench_soak(bsub)

    ev = sub.add_parser("eval", help="measure accuracy on labelled audio")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    add_eval_keywords(esub, add_common)
    add_eval_captions(esub)
    add_eval_parsers(esub)
    add_eval_vad(esub)
    add_speakers_parser(sub)
    add_tune_parser(sub)
    return parser
