"""RTTM reference files: a strict reader whose errors name the line and the fix.

RTTM (NIST) has one turn per line: `SPEAKER uri channel start duration <NA> <NA> speaker
<NA> <NA>`. Only SPEAKER lines are turns; other record types (SPKR-INFO, LEXEME, ...) and
`;;` comments are skipped, as NIST's scoring tools do.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from harken.models.errors import HarkenError

RTTM_FORMAT = "SPEAKER uri 1 start duration <NA> <NA> speaker <NA> <NA>"
_MIN_FIELDS = 8  # up to the speaker name; the last two (confidence, lookahead) are optional
_TURN_TYPE = "SPEAKER"


class RttmError(HarkenError):
    """An RTTM file is missing, does not parse, or does not fit its audio."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    uri: str
    start: float  # s
    end: float  # s
    speaker: str


def read_rttm(path: Path) -> dict[str, list[Turn]]:
    """Every SPEAKER turn of `path`, grouped by recording (uri), in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RttmError(f"{path} is not a text file; give an RTTM file ({RTTM_FORMAT})") \
            from exc
    except OSError as exc:
        raise RttmError(f"cannot read the RTTM {path}: {exc.strerror or exc}") from exc
    turns: dict[str, list[Turn]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != _TURN_TYPE:
            if fields and not fields[0].startswith(";;") and not fields[0].isupper():
                raise RttmError(f"{path}:{number} is not an RTTM line ({line.strip()[:40]!r});"
                                f" each line must read: {RTTM_FORMAT}")
            continue
        if len(fields) < _MIN_FIELDS:
            raise RttmError(f"{path}:{number} has {len(fields)} fields, an RTTM SPEAKER line "
                            f"needs {_MIN_FIELDS} or more: {RTTM_FORMAT}")
        try:
            start, duration = float(fields[3]), float(fields[4])
        except ValueError as exc:
            raise RttmError(f"{path}:{number}: start {fields[3]!r} and duration {fields[4]!r} "
                            f"must be seconds ({RTTM_FORMAT})") from exc
        if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration < 0:
            raise RttmError(f"{path}:{number}: start {fields[3]} and duration {fields[4]} must "
                            "be finite and not negative")
        uri = fields[1]
        turns.setdefault(uri, []).append(
            Turn(uri=uri, start=start, end=start + duration, speaker=fields[7]))
    return turns


def recording_turns(path: Path, stem: str) -> list[Turn]:
    """The turns of the one recording in `path` that goes with audio file `stem`."""
    found = read_rttm(path)
    if not found:
        raise RttmError(f"{path} has no SPEAKER lines; give an RTTM file ({RTTM_FORMAT})")
    if stem in found:
        return found[stem]
    if len(found) == 1:
        (name, turns), = found.items()
        # Often a naming difference (meeting1 vs meeting1_mix.wav), sometimes the wrong pair:
        # score it, and say so.
        print(f"harken: note: {path} describes recording {name!r}, not {stem!r}; scoring it "
              "against that audio anyway (check that AUDIO and RTTM belong together)",
              file=sys.stderr)
        return turns
    raise RttmError(f"{path} describes {', '.join(sorted(found))}, none named {stem!r} like "
                    "the audio file; rename the file or pass an RTTM of that one recording")
