"""The hand-over of a satellite from the wildcard subscription to its own
(engine/mqtt/handover.py): no frame taken twice, none lost beyond what a connection lost,
publish order kept."""

from __future__ import annotations

import random

import pytest

from harken.engine.mqtt.handover import Handover, Phase


def f(i: int) -> bytes:
    return b"frame-%d" % i


def ids(frames: list[bytes]) -> list[int]:
    return [int(frame.split(b"-")[1]) for frame in frames]


def test_wildcard_behind_takes_the_held_frames_at_the_first_common_one() -> None:
    h = Handover(now=0.0)
    h.subscribed(0.1)
    taken = [*h.from_wild(f(1), 0.1)]  # older, published before the subscription
    taken += h.from_own(f(3), 0.2) + h.from_own(f(4), 0.2)  # held back
    assert h.phase is Phase.HANDOVER
    assert h.held == 2
    taken += h.from_wild(f(2), 0.3)  # still before the common frame
    taken += h.from_wild(f(3), 0.4)  # the common frame: the held ones are taken
    assert h.phase is Phase.OWN
    taken += h.from_wild(f(4), 0.5) + h.from_own(f(5), 0.5) + h.from_wild(f(5), 0.6)
    assert ids(taken) == [1, 2, 3, 4, 5]
    assert h.duplicates == 3
    assert not h.timed_out


def test_wildcard_ahead_skips_the_own_frames_it_delivered_already() -> None:
    h = Handover(now=0.0)
    taken = h.from_wild(f(1), 0.1) + h.from_wild(f(2), 0.1) + h.from_wild(f(3), 0.1)
    h.subscribed(0.2)
    taken += h.from_own(f(2), 0.2)  # the wildcard had it: the hand-over point
    assert h.phase is Phase.OWN
    taken += h.from_wild(f(4), 0.3)  # a duplicate from now on
    taken += h.from_own(f(3), 0.3) + h.from_own(f(4), 0.3) + h.from_own(f(5), 0.3)
    assert ids(taken) == [1, 2, 3, 4, 5]
    assert h.duplicates == 3


def test_frames_the_broker_dropped_on_the_wildcard_come_from_the_own_subscription() -> None:
    h = Handover(now=0.0)
    h.subscribed(0.0)
    taken = h.from_own(f(1), 0.1) + h.from_own(f(2), 0.1) + h.from_own(f(3), 0.1)
    taken += h.from_wild(f(3), 0.2)  # 1 and 2 never came on the flooded wildcard
    assert ids(taken) == [1, 2, 3]


def test_the_own_connection_losing_an_expected_frame_still_takes_each_frame_once() -> None:
    h = Handover(now=0.0)
    taken = h.from_wild(f(1), 0.1) + h.from_wild(f(2), 0.1) + h.from_wild(f(3), 0.1)
    taken += h.from_own(f(1), 0.2) + h.from_own(f(3), 0.2)  # 2 lost on the own connection
    taken += h.from_own(f(4), 0.2)
    assert ids(taken) == [1, 2, 3, 4]


def test_no_common_frame_in_time_hands_over_with_the_held_frames() -> None:
    h = Handover(now=0.0, max_wait_s=1.0)
    h.subscribed(0.0)
    assert h.from_own(f(5), 0.1) == []
    assert h.expire(0.9) == []
    assert ids(h.expire(1.0)) == [5]
    assert h.timed_out
    assert h.phase is Phase.OWN
    # What the flooded wildcard still had queued from before is dropped, not replayed late.
    assert h.from_wild(f(4), 1.1) == []


def test_the_held_frames_are_bounded() -> None:
    h = Handover(now=0.0, max_frames=3, max_wait_s=100.0)
    h.subscribed(0.0)
    assert [h.from_own(f(i), 0.1) for i in range(3)] == [[], [], []]
    assert ids(h.from_own(f(3), 0.1)) == [0, 1, 2, 3]  # the fourth would exceed: handed over
    assert h.timed_out
    by_bytes = Handover(now=0.0, max_bytes=20, max_wait_s=100.0)
    assert by_bytes.from_own(b"x" * 15, 0.1) == []
    assert by_bytes.from_own(b"y" * 15, 0.1) == [b"x" * 15, b"y" * 15]


def test_identical_frames_are_never_taken_twice_in_a_row_of_silence() -> None:
    """Frames are known by their bytes: a satellite sending digital silence makes every frame
    look alike. The latest copy counts, so at most the frames in flight are skipped."""
    silent = b"\0" * 32
    h = Handover(now=0.0)
    taken = h.from_wild(silent, 0.1) + h.from_wild(silent, 0.1)
    h.subscribed(0.1)
    taken += h.from_own(silent, 0.2)  # matches the wildcard's latest copy
    taken += h.from_own(silent, 0.3) + h.from_own(silent, 0.3)
    assert len(taken) == 4
    assert h.phase is Phase.OWN


def test_the_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        Handover(now=0.0, max_wait_s=0.0)
    with pytest.raises(ValueError, match="max_wait_s"):
        Handover(now=0.0, window=0)


def simulate(rng: random.Random, *, wild_lag: float, own_lag: float, drop_wild: float,
             drop_own: float, n: int = 60) -> tuple[list[int], set[int], set[int]]:
    """Frames 0..n-1 published one a tick; the own subscription takes effect at a random
    frame. Each connection delivers its frames in order after its lag (plus jitter smaller
    than a tick), losing some; returns what was taken and what each connection delivered."""
    start = rng.randrange(5, 20)
    wild = [i for i in range(n) if rng.random() >= drop_wild]
    own = [i for i in range(start, n) if rng.random() >= drop_own]
    arrivals = [(i + wild_lag + rng.random() * 0.5, "wild", i) for i in wild] + \
        [(i + own_lag + rng.random() * 0.5, "own", i) for i in own]
    arrivals.sort()
    h = Handover(now=0.0, max_wait_s=1e9, max_frames=10_000, max_bytes=10**9, window=10_000)
    h.subscribed(start - 0.5)
    taken: list[bytes] = []
    for t, via, i in arrivals:
        taken += h.from_wild(f(i), t) if via == "wild" else h.from_own(f(i), t)
    return ids(taken), set(wild), set(own)


def test_random_interleavings_keep_order_and_take_every_frame_once() -> None:
    rng = random.Random(10)
    for _ in range(500):
        # The flooded wildcard behind by up to 30 frames (or slightly ahead) and losing
        # some; the own one whole: every frame either delivered is taken once, in order.
        taken, wild, own = simulate(rng, wild_lag=rng.uniform(0, 30), own_lag=0.0,
                                    drop_wild=rng.uniform(0, 0.7), drop_own=0.0)
        assert taken == sorted(wild | own)
        # The wildcard ahead (no flood), the own connection losing some: no frame twice,
        # order kept, nothing lost that the own connection delivered.
        taken, wild, own = simulate(rng, wild_lag=0.0, own_lag=rng.uniform(0, 3),
                                    drop_wild=0.0, drop_own=rng.uniform(0, 0.3))
        assert taken == sorted(set(taken))
        assert own <= set(taken)
