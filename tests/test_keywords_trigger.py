"""Trigger logic on scripted score sequences: threshold, patience, refractory, gaps."""

from __future__ import annotations

import argparse

import pytest

from harken.app.flags import parse_keywords
from harken.models.audio import SAMPLE_RATE
from harken.models.triggers import KeywordHit, KeywordTrigger, ScoredWindow, TriggerOptions

HOP = SAMPLE_RATE // 10  # 0.1 s
WIN = SAMPLE_RATE  # 1 s


def run(scores: list[float | None], *, keyword: str = "yes", **options: float) -> list[
        tuple[int, KeywordHit]]:
    """Feed one window per hop (None = no window there: a VAD gap); (window index, hit)."""
    trigger = KeywordTrigger(keywords=[keyword], options=TriggerOptions(**options),  # type: ignore[arg-type]
                             hop=HOP)
    hits = []
    for i, score in enumerate(scores):
        if score is None:
            continue
        window = ScoredWindow(start=i * HOP, end=i * HOP + WIN, scores={keyword: score})
        hits += [(i, h) for h in trigger.feed(window)]
    return hits


def test_threshold_is_inclusive_and_nothing_below_fires() -> None:
    assert run([0.79] * 20, threshold=0.8, patience=1) == []
    hits = run([0.5, 0.8, 0.5], threshold=0.8, patience=1)
    assert [i for i, _ in hits] == [1]
    assert hits[0][1].score == pytest.approx(0.8)


def test_patience_needs_consecutive_windows() -> None:
    hits = run([0.9, 0.2, 0.9, 0.2, 0.9, 0.95, 0.2], threshold=0.8, patience=2)
    assert [i for i, _ in hits] == [5]
    hit = hits[0][1]
    assert hit.score == pytest.approx((0.9 + 0.95) / 2)
    # The span every window of the run shares: last window's start .. first window's end.
    assert (hit.start, hit.end) == (5 * HOP, 4 * HOP + WIN)


def test_one_long_word_fires_exactly_once() -> None:
    # A word stays inside ~10 overlapping windows: one hit, however long it scores high.
    hits = run([0.1] * 3 + [0.97] * 25 + [0.1] * 3, threshold=0.8, patience=3,
               refractory_s=0.0)
    assert [i for i, _ in hits] == [5]


def test_refractory_blocks_a_quick_repeat_then_allows_it() -> None:
    high, low = 0.95, 0.1
    # Hit at window 1 (ends at 0.1 + 1.0 s); refractory 1 s: windows ending before 2.1 s
    # cannot fire, even after the score dropped and rose again.
    scores = [high, high, low, high, high, low] + [low] * 6 + [high, high]
    hits = run(scores, threshold=0.8, patience=2, refractory_s=1.0)
    assert [i for i, _ in hits] == [1, 13]
    # Without refractory the repeat at windows 3-4 fires.
    hits = run(scores, threshold=0.8, patience=2, refractory_s=0.0)
    assert [i for i, _ in hits] == [1, 4, 13]


def test_a_gap_between_windows_breaks_the_run() -> None:
    # Two high windows separated by a VAD gap are not "in a row".
    assert run([0.9, None, None, 0.9], threshold=0.8, patience=2) == []
    assert [i for i, _ in run([0.9, None, 0.9, 0.9], threshold=0.8, patience=2)] == [3]


def test_keywords_have_their_own_thresholds_and_runs() -> None:
    trigger = KeywordTrigger(keywords=["yes", "stop"],
                             options=TriggerOptions(threshold=0.8, thresholds={"stop": 0.95},
                                                    patience=1), hop=HOP)
    fired = []
    for i, (yes, stop) in enumerate([(0.85, 0.9), (0.1, 0.96)]):
        window = ScoredWindow(start=i * HOP, end=i * HOP + WIN, scores={"yes": yes, "stop": stop})
        fired += [(i, h.keyword) for h in trigger.feed(window)]
    assert fired == [(0, "yes"), (1, "stop")]


@pytest.mark.parametrize(("options", "message"), [
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"patience": 0}, "patience"),
    ({"refractory_s": -1.0}, "refractory"),
    ({"thresholds": {"yes": 2.0}}, "'yes'"),
])
def test_bad_options_are_rejected_with_the_field_named(options: dict[str, object],
                                                       message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TriggerOptions(**options)  # type: ignore[arg-type]


def test_thresholds_for_keywords_that_are_not_spotted_are_an_error() -> None:
    with pytest.raises(ValueError, match="not spotted"):
        KeywordTrigger(keywords=["yes"], options=TriggerOptions(thresholds={"no": 0.9}), hop=HOP)


def test_keyword_list_flag_syntax() -> None:
    assert parse_keywords("yes, no,stop:0.9") == (["yes", "no", "stop"], {"stop": 0.9})
    assert parse_keywords("") == ([], {})
    assert parse_keywords("all") == ([], {})
    with pytest.raises(argparse.ArgumentTypeError, match="bad threshold"):
        parse_keywords("stop:loud")
    with pytest.raises(argparse.ArgumentTypeError, match="empty keyword"):
        parse_keywords(":0.5")
