"""The hallucination guard: whether a refined text may replace the CTC text of its segment.

Sequence-to-sequence models fail differently from CTC: given noise or a cut-off word they can
invent fluent text, or loop on a phrase. The CTC first pass cannot invent words (each letter
is tied to frames), so a refinement that disagrees wildly with it is more likely invented than
corrected. The guard rejects:

- `empty`: the refinement is empty (nothing to show; the CTC text stands);
- `ctc_empty`: the CTC heard no words but the refinement has some (text invented on noise);
- `disagrees`: the character error rate of the refinement against the CTC text (both
  normalised, models/scoring.py) is above `max_cer`;
- `repeats`: a phrase of 1 to `max_ngram` words repeats more than `max_repeats` times in a
  row, more often than in the CTC text (a decoder loop).

`max_cer` is a trade-off: a trained CTC model disagrees with a good refinement in a few
percent of characters (spelling, words it misheard); hallucinations disagree by most of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from harken.models.scoring import cer, normalize_text

MAX_CER = 0.5  # reject when over half the characters differ from the CTC text
MAX_REPEATS = 3  # a phrase said 4 times in a row is a loop (unless the CTC heard it too)
MAX_NGRAM = 4  # words in the longest phrase checked for repetition


class GuardReason(enum.StrEnum):
    OK = "ok"
    EMPTY = "empty"
    CTC_EMPTY = "ctc_empty"
    DISAGREES = "disagrees"
    REPEATS = "repeats"


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardOptions:
    enabled: bool = True  # off: every non-empty refinement is accepted (measurements)
    max_cer: float = MAX_CER
    max_repeats: int = MAX_REPEATS
    max_ngram: int = MAX_NGRAM

    def __post_init__(self) -> None:
        if not self.max_cer > 0:
            raise ValueError(f"refine max_cer must be > 0, got {self.max_cer}")
        if self.max_repeats < 1 or self.max_ngram < 1:
            raise ValueError("refine max_repeats and max_ngram must be >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardVerdict:
    reason: GuardReason
    cer: float | None = None  # refinement vs CTC text, when both have words
    repeats: int = 0  # the longest run of one repeated phrase in the refinement

    @property
    def accepted(self) -> bool:
        return self.reason is GuardReason.OK


def longest_repeat(words: list[str], *, max_ngram: int) -> int:
    """The most consecutive times one phrase of 1..max_ngram words occurs ("a b a b a b": 3)."""
    best = 1 if words else 0
    for n in range(1, max_ngram + 1):
        i = 0
        while i + 2 * n <= len(words):
            run = 1
            while words[i + run * n: i + (run + 1) * n] == words[i: i + n]:
                run += 1
            best = max(best, run)
            i += n * (run - 1) + 1 if run > 1 else 1
    return best


def judge(refined: str, ctc: str, options: GuardOptions | None = None) -> GuardVerdict:
    """The verdict on `refined` against the CTC text of the same segment."""
    opts = options or GuardOptions()
    hyp, ref = normalize_text(refined), normalize_text(ctc)
    if not hyp:
        return GuardVerdict(reason=GuardReason.EMPTY)
    repeats = longest_repeat(hyp.split(), max_ngram=opts.max_ngram)
    if not opts.enabled:
        return GuardVerdict(reason=GuardReason.OK, repeats=repeats)
    if not ref:
        return GuardVerdict(reason=GuardReason.CTC_EMPTY, repeats=repeats)
    rate = cer(ref, hyp)
    if repeats > opts.max_repeats and repeats > longest_repeat(ref.split(),
                                                               max_ngram=opts.max_ngram):
        return GuardVerdict(reason=GuardReason.REPEATS, cer=rate, repeats=repeats)
    if rate is not None and rate > opts.max_cer:
        return GuardVerdict(reason=GuardReason.DISAGREES, cer=rate, repeats=repeats)
    return GuardVerdict(reason=GuardReason.OK, cer=rate, repeats=repeats)
