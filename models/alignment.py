"""CTC forced alignment: word times for a text the CTC model did not produce itself.

The second pass (models/refine.py) gives better text than greedy CTC but no usable times.
The first pass already computed per-frame CTC log-probs for the segment; the Viterbi path
through the CTC trellis of the refined text over those log-probs gives each letter its frames,
and so each word its start and end (WhisperX does the same with a separate wav2vec2 pass).

The refined words are spelled in the CTC vocabulary (case folded to the vocabulary's case,
accents stripped, punctuation the vocabulary lacks dropped). A word it still cannot spell
(digits, other scripts) is left out of the trellis and gets times interpolated between its
aligned neighbours, in proportion to its length. When nothing can be aligned (no frames,
fewer frames than letters), every word is interpolated over the segment.

Pure numpy: arrays in, typed results out.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

NEG_INF = -1e30  # log-prob of an impossible trellis state (finite: avoids inf - inf = nan)


@dataclass(frozen=True, slots=True, kw_only=True)
class CtcVocabulary:
    """How text is spelled in a CTC model's output vocabulary."""

    ids: Mapping[str, int]  # single-character tokens (and the delimiter) -> id
    blank_id: int
    delimiter_id: int | None  # the word delimiter token ("|" in wav2vec2 vocabularies)
    upper: bool  # the letters are upper case (LibriSpeech-trained models)

    @classmethod
    def from_tokenizer(cls, tokenizer: object) -> CtcVocabulary:
        """From a Wav2Vec2CTCTokenizer (blank = pad token, delimiter = word_delimiter_token)."""
        vocab: dict[str, int] = dict(tokenizer.get_vocab())  # type: ignore[attr-defined]
        blank = int(tokenizer.pad_token_id)  # type: ignore[attr-defined]
        delimiter_token = getattr(tokenizer, "word_delimiter_token", None)
        delimiter = vocab.get(delimiter_token) if isinstance(delimiter_token, str) else None
        return cls.from_vocab(vocab, blank_id=blank, delimiter_id=delimiter)

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int], *, blank_id: int,
                   delimiter_id: int | None) -> CtcVocabulary:
        chars = {t: i for t, i in vocab.items()
                 if len(t) == 1 and i != blank_id and i != delimiter_id}
        letters = [t for t in chars if t.isalpha()]
        upper = bool(letters) and sum(t.isupper() for t in letters) > len(letters) // 2
        return cls(ids=chars, blank_id=blank_id, delimiter_id=delimiter_id, upper=upper)

    def spell(self, word: str) -> tuple[int, ...] | None:
        """Token ids of `word`, or None when it has a character the vocabulary lacks.

        Punctuation (and other non-alphanumeric characters) the vocabulary has no token for
        is dropped: "Americans," spells AMERICANS. A word of punctuation only spells nothing
        (an empty tuple); a digit or a letter of another script makes it unspellable.
        """
        text = word.upper() if self.upper else word.lower()
        text = text.replace("\u2019", "'").replace("\u2018", "'")
        out: list[int] = []
        for char in text:
            token = self.ids.get(char)
            if token is None:
                # Accented letters: try the base letter (é -> E).
                base = unicodedata.normalize("NFKD", char)[:1]
                token = self.ids.get(base) if base != char else None
            if token is not None:
                out.append(token)
            elif char.isalnum():
                return None
        return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlignedWord:
    word: str  # as the refined text spells it (case, punctuation kept)
    start: float  # seconds on the caller's clock
    end: float
    aligned: bool  # False: the time is interpolated (unspellable, or no feasible path)


def viterbi(logprobs: np.ndarray, targets: Sequence[int], *, blank_id: int) -> np.ndarray | None:
    """The best CTC path of `targets` through `logprobs` [frames, vocab].

    Returns, per frame, the index into `targets` that the frame emits, or -1 for a blank;
    None when the frames cannot hold the targets (a repeated label needs a blank between).
    """
    n_frames = logprobs.shape[0]
    n_targets = len(targets)
    if n_targets == 0:
        return np.full(n_frames, -1, dtype=np.int64)
    # Extended label sequence: blank, t0, blank, t1, ..., blank (2L + 1 states).
    states = np.full(2 * n_targets + 1, blank_id, dtype=np.int64)
    states[1::2] = np.asarray(targets, dtype=np.int64)
    n_states = len(states)
    # A label state may skip the blank before it unless it repeats the label before that.
    skip = np.zeros(n_states, dtype=bool)
    skip[3::2] = states[3::2] != states[1:-2:2]
    emit = logprobs[:, states].astype(np.float64)  # [frames, states]
    score = np.full(n_states, NEG_INF)
    score[:2] = emit[0, :2]
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, n_frames):
        stay = score
        step = np.concatenate(([NEG_INF], score[:-1]))
        jump = np.where(skip, np.concatenate(([NEG_INF, NEG_INF], score[:-2])), NEG_INF)
        best = np.maximum(stay, np.maximum(step, jump))
        move = np.where(jump > np.maximum(stay, step), 2, np.where(step > stay, 1, 0))
        back[t] = move
        score = best + emit[t]
    # The path ends in the last label or the trailing blank.
    last = n_states - 1 if score[-1] >= score[-2] else n_states - 2
    if score[last] <= NEG_INF / 2:
        return None
    path = np.empty(n_frames, dtype=np.int64)
    state = last
    for t in range(n_frames - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])
    return np.where(path % 2 == 1, (path - 1) // 2, -1)


def _interpolate(words: Sequence[str], times: list[tuple[float, float] | None], *,
                 start_s: float, end_s: float) -> list[tuple[float, float]]:
    """Fill each run of missing times between its aligned neighbours, by character length."""
    out: list[tuple[float, float]] = []
    i = 0
    while i < len(words):
        known = times[i]
        if known is not None:
            out.append(known)
            i += 1
            continue
        j = i
        while j < len(words) and times[j] is None:
            j += 1
        left = out[-1][1] if out else start_s
        nxt = times[j] if j < len(words) else None
        right = nxt[0] if nxt is not None else end_s
        right = max(right, left)
        weights = [max(1, len(w)) for w in words[i:j]]
        total = float(sum(weights))
        at = left
        for weight in weights:
            stop = at + (right - left) * weight / total
            out.append((at, stop))
            at = stop
        i = j
    return out


def align_words(text: str, logprobs: np.ndarray, vocabulary: CtcVocabulary, *,
                start_s: float, frame_s: float,
                end_s: float | None = None) -> tuple[AlignedWord, ...]:
    """Times for each whitespace-separated word of `text` from the segment's CTC log-probs.

    `start_s` is the time of frame 0 and `frame_s` the hop between frames (0.02 s for
    wav2vec2-style encoders); the segment ends at `end_s` (default: after the last frame),
    which bounds the interpolated times.
    """
    words = text.split()
    if not words:
        return ()
    n_frames = int(logprobs.shape[0]) if logprobs.ndim == 2 else 0
    if end_s is None:
        end_s = start_s + n_frames * frame_s
    spelled = [vocabulary.spell(w) for w in words]
    # Words that spell to something go into the trellis, "|"-separated.
    targets: list[int] = []
    spans: list[tuple[int, int] | None] = []  # per word: [first, last] index in targets
    for tokens in spelled:
        if not tokens:
            spans.append(None)
            continue
        if targets and vocabulary.delimiter_id is not None:
            targets.append(vocabulary.delimiter_id)
        spans.append((len(targets), len(targets) + len(tokens) - 1))
        targets.extend(tokens)
    path = viterbi(logprobs, targets, blank_id=vocabulary.blank_id) if (
        targets and n_frames) else None
    times: list[tuple[float, float] | None] = [None] * len(words)
    if path is not None:
        frames = np.arange(n_frames)
        for i, span in enumerate(spans):
            if span is None:
                continue
            inside = frames[(path >= span[0]) & (path <= span[1])]
            if inside.size:
                times[i] = (start_s + int(inside[0]) * frame_s,
                            start_s + (int(inside[-1]) + 1) * frame_s)
    filled = _interpolate(words, times, start_s=start_s, end_s=end_s)
    return tuple(AlignedWord(word=w, start=s, end=e, aligned=times[i] is not None)
                 for i, (w, (s, e)) in enumerate(zip(words, filled, strict=True)))
