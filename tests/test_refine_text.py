"""The pure parts of two-pass captions: CTC forced alignment on constructed log-probs with a
known path, the text normaliser, WER/CER, and the hallucination guard."""

from __future__ import annotations

import numpy as np
import pytest

from harken.models.alignment import CtcVocabulary, align_words, viterbi
from harken.models.guard import GuardOptions, GuardReason, judge, longest_repeat
from harken.models.scoring import cer, corpus_errors, normalize_text, wer

FRAME_S = 0.02
LETTERS = "ETAONISRHDLUCMFWGYPBVKXJQZ'"
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
         **{c: 5 + i for i, c in enumerate(LETTERS)}}
ON_PATH = np.log(0.9)  # log-prob of the token a constructed frame emits


def vocabulary() -> CtcVocabulary:
    return CtcVocabulary.from_vocab(VOCAB, blank_id=0, delimiter_id=4)


def logprobs_of(path: list[str], *, noise: int = 0) -> np.ndarray:
    """Frames whose most likely token follows `path` (each a token of VOCAB); `noise` > 0
    adds random log-probs below the path's."""
    rng = np.random.default_rng(noise)
    out = np.full((len(path), len(VOCAB)), np.log(0.1 / (len(VOCAB) - 1)))
    if noise:
        out += rng.uniform(-1.0, 0.0, size=out.shape)
    for t, token in enumerate(path):
        out[t, VOCAB[token]] = ON_PATH
    return out.astype(np.float32)


def frames(text: str) -> list[str]:
    """'_' is a blank frame, '|' the delimiter, anything else a letter frame."""
    return ["<pad>" if c == "_" else c for c in text]


# ---------------------------------------------------------------------- alignment


def test_viterbi_follows_the_constructed_path() -> None:
    path = frames("_CC_AT||_DOOG_")
    targets = [VOCAB[c] for c in "CAT|DOG"]
    got = viterbi(logprobs_of(path, noise=3), targets, blank_id=0)
    assert got is not None
    expected = [-1, 0, 0, -1, 1, 2, 3, 3, -1, 4, 5, 5, 6, -1]
    assert got.tolist() == expected


def test_words_get_the_frames_of_their_letters() -> None:
    lp = logprobs_of(frames("_CC_AT||_DOOG_"), noise=1)
    words = align_words("Cat, dog!", lp, vocabulary(), start_s=10.0, frame_s=FRAME_S)
    assert [w.word for w in words] == ["Cat,", "dog!"]  # refined spelling is kept
    assert all(w.aligned for w in words)
    # C starts at frame 1, T ends with frame 5; D starts at frame 9, G ends with frame 12.
    assert words[0].start == pytest.approx(10.0 + 1 * FRAME_S)
    assert words[0].end == pytest.approx(10.0 + 6 * FRAME_S)
    assert words[1].start == pytest.approx(10.0 + 9 * FRAME_S)
    assert words[1].end == pytest.approx(10.0 + 13 * FRAME_S)


def test_a_doubled_letter_needs_the_blank_between() -> None:
    # "ALL": the two Ls are separate emissions only with a blank between them.
    lp = logprobs_of(frames("_A_L_L_"))
    words = align_words("all", lp, vocabulary(), start_s=0.0, frame_s=FRAME_S)
    assert words[0].aligned
    assert (words[0].start, words[0].end) == pytest.approx((1 * FRAME_S, 6 * FRAME_S))
    # Too few frames for A, L, blank, L: no path, the word is interpolated.
    short = logprobs_of(frames("AL"))
    assert viterbi(short, [VOCAB[c] for c in "ALL"], blank_id=0) is None
    words = align_words("all", short, vocabulary(), start_s=0.0, frame_s=FRAME_S)
    assert not words[0].aligned
    assert (words[0].start, words[0].end) == pytest.approx((0.0, 2 * FRAME_S))


def test_unspellable_words_are_interpolated_between_neighbours() -> None:
    lp = logprobs_of(frames("_CAT|____|DOG_"))
    words = align_words("cat 1963 dog", lp, vocabulary(), start_s=0.0, frame_s=FRAME_S)
    cat, year, dog = words
    assert cat.aligned
    assert dog.aligned
    assert not year.aligned
    assert year.start == pytest.approx(cat.end)
    assert year.end == pytest.approx(dog.start)
    assert cat.end < dog.start


def test_spelling_folds_case_accents_and_punctuation() -> None:
    v = vocabulary()
    assert v.upper
    assert v.spell("Don't,") == tuple(VOCAB[c] for c in "DON'T")
    assert v.spell("café") == tuple(VOCAB[c] for c in "CAFE")
    assert v.spell("—") == ()
    assert v.spell("3:2") is None
    lower = CtcVocabulary.from_vocab({k.lower(): i for k, i in VOCAB.items()}, blank_id=0,
                                     delimiter_id=4)
    assert not lower.upper
    assert lower.spell("Cat") == tuple(VOCAB[c] for c in "CAT")


def test_no_frames_spreads_the_words_over_the_segment() -> None:
    empty = np.zeros((0, len(VOCAB)), np.float32)
    words = align_words("a bb", empty, vocabulary(), start_s=2.0, frame_s=FRAME_S, end_s=5.0)
    assert [(w.start, w.end) for w in words] == pytest.approx([(2.0, 3.0), (3.0, 5.0)])
    assert align_words("", empty, vocabulary(), start_s=0.0, frame_s=FRAME_S) == ()


# ---------------------------------------------------------------------- scoring


def test_normaliser_rules() -> None:
    assert normalize_text("And so, my fellow Americans!") == "and so my fellow americans"
    assert normalize_text("DON'T ‘quote’ well-known") == "don't quote well known"
    assert normalize_text("ratio 3:2") == "ratio 3 2"
    assert normalize_text("  Café\tÉTÉ ") == "café été"
    once = normalize_text("It's — “fine”, isn't it?")
    assert normalize_text(once) == once


def test_error_rates_count_edits_after_normalising() -> None:
    assert wer("HE HOPED THERE", "He hoped, their.") == pytest.approx(1 / 3)
    assert cer("abcd", "abxd") == pytest.approx(1 / 4)
    assert wer("", "") is None
    total = corpus_errors(["a b c", ""], ["a c", "x"])
    # one deletion in the first pair, one insertion against an empty reference
    assert (total.errors, total.reference, total.deletions, total.insertions) == (2, 3, 1, 1)
    with pytest.raises(ValueError, match="1 references but 0 hypotheses"):
        corpus_errors(["a"], [])


# ---------------------------------------------------------------------- guard


def test_guard_verdicts() -> None:
    assert judge("Hello there.", "HELLO THERE").accepted
    assert judge("Hello, their.", "HELLO THERE").reason is GuardReason.OK  # small CER
    assert judge("  ", "HELLO").reason is GuardReason.EMPTY
    assert judge("Thank you.", "").reason is GuardReason.CTC_EMPTY
    loop = judge("I said " + "thank you " * 6, "I SAID THANK YOU")
    assert loop.reason is GuardReason.REPEATS
    assert loop.repeats == 6
    far = judge("Subscribe to my channel for more videos", "HELLO THERE")
    assert far.reason is GuardReason.DISAGREES
    assert far.cer is not None
    assert far.cer > 0.5


def test_guard_allows_repeats_the_ctc_heard_and_can_be_turned_off() -> None:
    ctc = "NO NO NO NO NO STOP"
    assert judge("No, no, no, no, no, stop!", ctc).accepted
    off = GuardOptions(enabled=False)
    assert judge("Completely different words", "HELLO", off).accepted
    assert judge("Words on silence", "", off).accepted
    assert judge("", "HELLO", off).reason is GuardReason.EMPTY  # nothing to show either way
    strict = GuardOptions(max_cer=0.01)
    assert judge("Hello, their.", "HELLO THERE", strict).reason is GuardReason.DISAGREES
    with pytest.raises(ValueError, match="max_cer"):
        GuardOptions(max_cer=0)


def test_longest_repeat() -> None:
    assert longest_repeat(["a", "b", "a", "b", "a", "b", "c"], max_ngram=4) == 3
    assert longest_repeat(["x", "x", "x", "x"], max_ngram=1) == 4
    assert longest_repeat(["one", "two", "three"], max_ngram=4) == 1
    assert longest_repeat([], max_ngram=4) == 0
