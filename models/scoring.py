"""Text normalisation and word/character error rates (jiwer), for evaluation and the guard.

The normaliser, applied to references and hypotheses alike, makes CTC output (upper case, no
punctuation), sequence-to-sequence output (cased, punctuated) and the reference layouts
(LibriSpeech upper case, LJ Speech and FLEURS mixed) comparable:

1. Unicode NFKC, then case folding ("Americans" == "AMERICANS").
2. Curly apostrophes become "'"; accented letters keep their accents (NFKC, not NFKD).
3. Hyphens, dashes and slashes become spaces ("well-known" == "well known").
4. Every other character that is not a letter, a digit, an apostrophe or a space becomes a
   space (punctuation, symbols: "3:2" is "3 2", "Americans," is "americans").
5. Apostrophes at the start or end of a word are removed (quotes), inside a word they stay
   ("don't" keeps its apostrophe, as CTC vocabularies spell it).
6. Runs of white space become one space; leading and trailing space is stripped.

It does not spell numbers, expand abbreviations or unify British and American spelling:
"1963" and "nineteen sixty three" count as different words. References here spell numbers
out, and so do most of what the models print for read speech; the rest shows up as errors.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

_SEPARATORS = re.compile(r"[-\u2010-\u2015/]")
_NOT_KEPT = re.compile(r"[^\w\s']|_")
_EDGE_APOSTROPHES = re.compile(r"(?<!\w)'+|'+(?!\w)")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The documented normalisation above; idempotent."""
    out = unicodedata.normalize("NFKC", text).casefold()
    out = out.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    out = _SEPARATORS.sub(" ", out)
    out = _NOT_KEPT.sub(" ", out)
    out = _EDGE_APOSTROPHES.sub("", out)
    return _SPACES.sub(" ", out).strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRate:
    """Edit distance over a corpus: errors / reference units (words or characters)."""

    errors: int  # substitutions + deletions + insertions
    reference: int  # reference units
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def rate(self) -> float | None:
        """None when the reference is empty (the rate is undefined)."""
        return self.errors / self.reference if self.reference else None

    def __add__(self, other: ErrorRate) -> ErrorRate:
        return ErrorRate(errors=self.errors + other.errors,
                         reference=self.reference + other.reference,
                         substitutions=self.substitutions + other.substitutions,
                         deletions=self.deletions + other.deletions,
                         insertions=self.insertions + other.insertions)


def _units(text: str, *, chars: bool) -> int:
    return len(text) if chars else len(text.split())


def _errors(reference: str, hypothesis: str, *, chars: bool) -> ErrorRate:
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        # jiwer refuses an empty reference: everything said is an insertion.
        n = _units(hyp, chars=chars)
        return ErrorRate(errors=n, reference=0, insertions=n)
    if not hyp:
        n = _units(ref, chars=chars)
        return ErrorRate(errors=n, reference=n, deletions=n)
    out = jiwer.process_characters(ref, hyp) if chars else jiwer.process_words(ref, hyp)
    s, d, i = int(out.substitutions), int(out.deletions), int(out.insertions)
    return ErrorRate(errors=s + d + i, reference=s + d + int(out.hits), substitutions=s,
                     deletions=d, insertions=i)


def word_errors(reference: str, hypothesis: str) -> ErrorRate:
    return _errors(reference, hypothesis, chars=False)


def char_errors(reference: str, hypothesis: str) -> ErrorRate:
    """Character edits over the normalised texts (spaces count as characters)."""
    return _errors(reference, hypothesis, chars=True)


def corpus_errors(references: Sequence[str], hypotheses: Sequence[str], *,
                  chars: bool = False) -> ErrorRate:
    """Summed edits over pairs (a corpus WER/CER, not a mean of per-utterance rates)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = ErrorRate(errors=0, reference=0)
    for ref, hyp in zip(references, hypotheses, strict=True):
        total += _errors(ref, hyp, chars=chars)
    return total


def cer(reference: str, hypothesis: str) -> float | None:
    return char_errors(reference, hypothesis).rate


def wer(reference: str, hypothesis: str) -> float | None:
    return word_errors(reference, hypothesis).rate


def text_after(previous: str, whole: str) -> str | None:
    """What `whole` says after it repeats `previous`: `whole` transcribes the audio of
    `previous` and what follows it, and the words after the last one matching `previous`'s
    end are the rest (their case and punctuation kept). None when `whole` does not repeat
    `previous`'s last words (at least two, compared normalised) or says nothing after them:
    then `whole` cannot be cut there."""
    before = normalize_text(previous).split()
    words = whole.split()
    # Normalised tokens of `whole`, each with the word it comes from ("flour-fatten" gives two).
    tokens = [(token, i) for i, word in enumerate(words) for token in normalize_text(word).split()]
    if not before or not tokens:
        return None
    matcher = difflib.SequenceMatcher(a=before, b=[t for t, _ in tokens], autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size]
    if not blocks:
        return None
    last = blocks[-1]
    if last.a + last.size != len(before) or last.size < min(2, len(before)):
        return None
    rest = words[tokens[last.b + last.size - 1][1] + 1:]
    return " ".join(rest) if rest else None
