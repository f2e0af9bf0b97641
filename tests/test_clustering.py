"""Online clustering and turn aggregation with controlled embeddings and activities."""

from __future__ import annotations

import numpy as np
import pytest

from harken.models.clustering import (
    ActivityAggregator,
    ClusteringOptions,
    OnlineClustering,
    TurnTracker,
    Voiceprint,
    l2_normalize,
    name_voice,
    overlap_weights,
)

DIM = 32
FRAMES = 50


def voices(n: int, *, seed: int = 0) -> np.ndarray:
    """n well-separated unit 'true voices' (random directions in 32-d are near-orthogonal)."""
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, DIM)))


def heard(voice: np.ndarray, *, seed: int, noise: float = 0.15) -> np.ndarray:
    """One window's embedding of a voice: the voice plus noise (cosine ~0.9 to the voice)."""
    rng = np.random.default_rng(seed)
    return l2_normalize(voice + noise * rng.standard_normal(DIM) / np.sqrt(DIM) * 4)


def window(*speaking: int, k: int = 2, level: float = 0.9) -> np.ndarray:
    """Activity [frames, k]: the listed local slots speak the whole window, others are silent."""
    act = np.full((FRAMES, k), 0.05, dtype=np.float32)
    for slot in speaking:
        act[:, slot] = level
    return act


def step(clus: OnlineClustering, slots: dict[int, np.ndarray], *, seed: int,
         k: int = 2) -> dict[int, str]:
    """One window where local slot -> voice; returns local slot -> global label."""
    emb = np.full((k, DIM), np.nan, dtype=np.float32)
    for slot, voice in slots.items():
        emb[slot] = heard(voice, seed=seed * 10 + slot)
    out = clus.identify(window(*slots, k=k), emb)
    return {slot: clus.labels[g] for slot, g in out.mapping.items()}


OPTS = ClusteringOptions(delta_new=0.6)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_speakers_keep_their_labels_across_shuffled_local_slots(n: int) -> None:
    v = voices(n)
    clus = OnlineClustering(options=OPTS)
    rng = np.random.default_rng(n)
    label_of: dict[int, str] = {}
    for t in range(40):
        a, b = rng.choice(n, size=2, replace=False)  # two of the n talk, in random slots
        got = step(clus, {0: v[a], 1: v[b]}, seed=t)
        for slot, who in ((0, a), (1, b)):
            label_of.setdefault(int(who), got[slot])
            assert got[slot] == label_of[int(who)], f"window {t}: voice {who} relabelled"
    assert clus.anonymous_speakers == n
    assert sorted(label_of.values()) == [f"S{i}" for i in range(1, n + 1)]


def test_two_local_speakers_never_share_a_global_speaker() -> None:
    v = voices(2)
    clus = OnlineClustering(options=OPTS)
    assert step(clus, {0: v[0]}, seed=1) == {0: "S1"}
    # Both local speakers are within delta_new of S1; greedy matching would give S1 twice.
    near = l2_normalize(v[0] + 0.2 * v[1])
    out = clus.identify(window(0, 1), np.stack([v[0], near]))
    assert out.distances[0] < 0.1
    assert float(1 - near @ clus.centroid(0)) < OPTS.delta_new
    assert [clus.labels[out.mapping[s]] for s in (0, 1)] == ["S1", "S2"]


def test_overlapped_speech_maps_both_speakers_and_gives_overlapping_turns() -> None:
    v = voices(2)
    clus = OnlineClustering(options=OPTS)
    step(clus, {0: v[0]}, seed=1)
    step(clus, {1: v[1]}, seed=2)
    both = clus.identify(window(0, 1), np.stack([heard(v[1], seed=3), heard(v[0], seed=4)]))
    assert [clus.labels[both.mapping[s]] for s in (0, 1)] == ["S2", "S1"]
    act = clus.to_global(both, window(0, 1))
    tracker = TurnTracker(threshold=0.6)
    tracker.push(0, act)
    turns = tracker.close()
    assert {(t.speaker, t.start, t.end) for t in turns} == {(0, 0, FRAMES), (1, 0, FRAMES)}


def test_overlap_weights_favour_frames_where_a_speaker_dominates() -> None:
    act = np.array([[0.9, 0.1], [0.9, 0.9], [0.1, 0.9]], dtype=np.float32)
    w = overlap_weights(act)
    assert w[0, 0] > 5 * w[1, 0]  # alone beats overlapped
    assert w[2, 1] > 5 * w[1, 1]
    assert w[2, 0] < w[1, 0]  # silent counts least
    assert (w > 0).all()


def test_a_speaker_returning_after_a_long_silence_keeps_the_label() -> None:
    v = voices(3)
    clus = OnlineClustering(options=OPTS)
    assert step(clus, {0: v[0]}, seed=0) == {0: "S1"}
    for t in range(1, 200):  # a long stretch of other people talking
        step(clus, {1: v[1], 0: v[2]}, seed=t)
    assert step(clus, {1: v[0]}, seed=999) == {1: "S1"}
    assert clus.anonymous_speakers == 3


def test_a_new_voice_once_max_speakers_is_reached_takes_the_closest_free_speaker() -> None:
    v = voices(3)
    clus = OnlineClustering(options=ClusteringOptions(delta_new=0.6, max_speakers=2))
    step(clus, {0: v[0]}, seed=1)
    step(clus, {0: v[1]}, seed=2)
    newcomer = l2_normalize(v[2] + 0.9 * v[1])  # nearer S2 than S1, but past delta_new
    out = clus.identify(window(0), np.stack([newcomer, np.full(DIM, np.nan)]))
    assert clus.labels[out.mapping[0]] == "S2"
    assert clus.anonymous_speakers == 2  # no S3
    # Three voices in one window with room for two: one-to-one, so one is left out.
    emb = np.stack([heard(v[0], seed=5), heard(v[1], seed=6), newcomer])
    out = clus.identify(window(0, 1, 2, k=3), emb)
    assert sorted(clus.labels[g] for g in out.mapping.values()) == ["S1", "S2"]
    assert len(out.mapping) == 2
    assert clus.anonymous_speakers == 2


def test_only_speakers_above_rho_update_create_or_update_centroids() -> None:
    v = voices(2)
    clus = OnlineClustering(options=ClusteringOptions(delta_new=0.6, rho_update=0.3))
    step(clus, {0: v[0]}, seed=1)
    before = clus.centroid(0).copy()
    brief = window(0)
    brief[:, 0] = 0.05
    brief[:3, 0] = 0.9  # active (peak 0.9) but mean activity ~0.1 < rho_update
    out = clus.identify(brief, np.stack([heard(v[0], seed=7), np.full(DIM, np.nan)]))
    assert out.mapping == {0: 0}
    np.testing.assert_array_equal(clus.centroid(0), before)
    # A brief unknown voice is not trusted to found a new speaker while one is free.
    out = clus.identify(brief, np.stack([heard(v[1], seed=8), np.full(DIM, np.nan)]))
    assert clus.anonymous_speakers == 1
    assert clus.labels[out.mapping[0]] == "S1"


def test_inactive_local_speakers_are_ignored() -> None:
    v = voices(2)
    clus = OnlineClustering(options=OPTS)
    out = clus.identify(window(0, level=0.5), np.stack([v[0], v[1]]))  # peak < tau_active
    assert out.mapping == {}
    assert clus.num_speakers == 0


def test_an_enrolled_voice_gets_its_name_and_a_stranger_does_not() -> None:
    v = voices(3)
    clus = OnlineClustering(options=ClusteringOptions(delta_new=0.6, max_speakers=1,
                                                      enrolled_threshold=0.7),
                            voiceprints=[Voiceprint(name="Ann", embedding=v[0]),
                                         Voiceprint(name="Bob", embedding=v[1])])
    assert clus.labels == ("Ann", "Bob")
    assert step(clus, {1: v[1], 0: v[0]}, seed=1) == {1: "Bob", 0: "Ann"}
    assert clus.is_enrolled(0)
    assert step(clus, {0: v[2]}, seed=2) == {0: "S1"}
    # max_speakers is reached: a further stranger falls back to S1, never to Ann or Bob.
    stranger = l2_normalize(voices(1, seed=9)[0] + 0.5 * v[0])
    out = clus.identify(window(0), np.stack([stranger, np.full(DIM, np.nan)]))
    assert [clus.labels[g] for g in out.mapping.values()] == ["S1"]
    # Enrolled voiceprints are references: hearing Ann does not move them.
    np.testing.assert_allclose(clus.centroid(0), v[0], atol=1e-6)


def test_a_voice_below_the_enrollment_threshold_is_not_named() -> None:
    v = voices(2)
    clus = OnlineClustering(options=ClusteringOptions(delta_new=1.0, enrolled_threshold=0.95),
                            voiceprints=[Voiceprint(name="Ann", embedding=v[0])])
    similar = l2_normalize(v[0] + 0.5 * v[1])  # cosine ~0.89 < 0.95
    out = clus.identify(window(0), np.stack([similar, np.full(DIM, np.nan)]))
    assert [clus.labels[g] for g in out.mapping.values()] == ["S1"]


def test_aggregator_averages_overlapping_windows_and_releases_each_frame_once() -> None:
    agg = ActivityAggregator()
    agg.add(0, np.ones((10, 1), dtype=np.float32))
    agg.add(5, np.zeros((10, 2), dtype=np.float32))
    start, first = agg.release(5)
    assert start == 0
    np.testing.assert_allclose(first[:, 0], 1.0)
    start, mid = agg.release(15)
    assert start == 5
    assert mid.shape == (10, 2)
    # Frames 5..9 are covered by both windows: a weighted mean strictly between 0 and 1.
    assert ((mid[:5, 0] > 0) & (mid[:5, 0] < 1)).all()
    np.testing.assert_allclose(mid[5:], 0.0)
    assert agg.release(15)[1].shape[0] == 0  # nothing is released twice
    assert agg.release(20)[1].shape == (5, 0)  # no window covers it: silence


def test_turn_tracker_merges_short_pauses_and_drops_short_turns() -> None:
    act = np.zeros((40, 2), dtype=np.float32)
    act[0:10, 0] = 0.9
    act[12:20, 0] = 0.8  # a 2-frame pause: merged
    act[30:32, 1] = 0.9  # 2 frames: dropped
    tracker = TurnTracker(threshold=0.6, min_turn=3, merge_gap=3)
    turns = tracker.push(0, act[:25]) + tracker.push(25, act[25:]) + tracker.close()
    assert [(t.speaker, t.start, t.end) for t in turns] == [(0, 0, 20)]
    assert turns[0].score == pytest.approx((10 * 0.9 + 8 * 0.8) / 18)
    with pytest.raises(ValueError, match="contiguous"):
        tracker.push(99, act)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="delta_new"):
        ClusteringOptions(delta_new=3.0)
    with pytest.raises(ValueError, match="max_speakers"):
        ClusteringOptions(max_speakers=0)
    with pytest.raises(ValueError, match="unique"):
        OnlineClustering(options=OPTS,
                         voiceprints=[Voiceprint(name="A", embedding=voices(1)[0])] * 2)


# ---------------------------------------------------------------- issue 11: the fixes


def _unit(*coords: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[:len(coords)] = coords
    return v


def test_pairs_over_delta_new_are_masked_before_the_assignment() -> None:
    """Distances [[1.807, 1.14], [1.038, 0.927]] with delta_new 1.0: local 1 is S2's.

    On raw distances the Hungarian assignment prefers 1.14 + 1.038 (both over delta_new,
    both undone: two new speakers) to 1.807 + 0.927; masked first, the one valid pair wins.
    """
    clus = OnlineClustering(options=ClusteringOptions(delta_new=1.0))
    # S1 = e1 and S2 = e2, heard together so they are never merged.
    out = clus.identify(window(0, 1), np.stack([_unit(1.0), _unit(0.0, 1.0)]))
    assert [clus.labels[out.mapping[s]] for s in (0, 1)] == ["S1", "S2"]
    a0, a1 = 1 - 1.807, 1 - 1.14  # cosines of local 0 to S1, S2
    b0, b1 = 1 - 1.038, 1 - 0.927  # cosines of local 1 to S1, S2
    local0 = _unit(a0, a1, np.sqrt(1 - a0**2 - a1**2))
    local1 = _unit(b0, b1, 0.0, np.sqrt(1 - b0**2 - b1**2))
    out = clus.identify(window(0, 1), np.stack([local0, local1]))
    assert out.distances[1] == pytest.approx(0.927, abs=1e-4)
    assert clus.labels[out.mapping[1]] == "S2"
    assert clus.labels[out.mapping[0]] == "S3"  # the only voice past delta_new of both
    assert out.created == (out.mapping[0],)


def test_random_distance_matrices_never_lose_a_valid_match() -> None:
    """Whenever a one-to-one matching within delta_new exists, as many pairs match."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(11)
    for _ in range(300):
        clus = OnlineClustering(options=ClusteringOptions(delta_new=0.8, rho_update=0.0))
        centres = voices(3, seed=int(rng.integers(1 << 30)))
        clus.identify(window(0, 1, 2, k=3), centres)  # S1..S3, heard together
        locals_ = l2_normalize(centres[rng.permutation(3)[:2]]
                               + rng.normal(0, 0.35, (2, DIM)))
        dist = 1.0 - locals_.astype(np.float64) @ centres.T.astype(np.float64)
        valid = dist <= 0.8
        rows, cols = linear_sum_assignment(np.where(valid, 0.0, 1.0))  # max valid matching
        best = int(valid[rows, cols].sum())
        out = clus.identify(window(0, 1), locals_)
        matched = sum(1 for k, g in out.mapping.items() if g not in out.created)
        assert matched == best


def test_a_short_interjection_never_founds_a_speaker() -> None:
    """A 100 ms interjection (mean activity 0.09) while S1 talks: not a permanent S2."""
    v = voices(2)
    clus = OnlineClustering(options=OPTS)
    frames = 250  # 5 s of 20 ms frames
    act = np.full((frames, 2), 0.075, dtype=np.float32)
    act[:, 0] = 0.9
    act[100:105, 1] = 0.9  # 5 frames = 100 ms
    assert act[:, 1].mean() == pytest.approx(0.09, abs=0.002)
    first = clus.identify(act, np.stack([heard(v[0], seed=1), heard(v[1], seed=2)]))
    assert [clus.labels[g] for g in first.mapping.values()] == ["S1"]
    for t in range(3, 8):  # the same again: S1 is taken by local 0 every time
        out = clus.identify(act, np.stack([heard(v[0], seed=t), heard(v[1], seed=t + 50)]))
        assert out.created == ()
        assert 1 not in out.mapping
    assert clus.anonymous_speakers == 1
    # When the newcomer really talks (above rho_update), it becomes S2.
    assert step(clus, {0: v[0], 1: v[1]}, seed=99) == {0: "S1", 1: "S2"}


def _at(degrees: float) -> np.ndarray:
    """A unit voice `degrees` away from e1, in the e1-e2 plane."""
    rad = np.deg2rad(degrees)
    return _unit(float(np.cos(rad)), float(np.sin(rad)))


def _drifting_pair(*, heard_together: bool) -> tuple[OnlineClustering, list[object]]:
    """S1 at 0 deg, S2 at 75 deg (distance 0.74 > delta_new 0.6); then S2's voice comes
    each time 8 deg nearer S1 than S2's centroid, so its nearest speaker is always S2 while
    the centroid drifts within delta_new of S1 (66.4 deg)."""
    clus = OnlineClustering(options=ClusteringOptions(delta_new=0.6, rho_update=0.3))
    if heard_together:
        clus.identify(window(0, 1), np.stack([_at(0), _at(75)]))
    else:
        clus.identify(window(0), np.stack([_at(0), np.full(DIM, np.nan)]))
        clus.identify(window(1), np.stack([np.full(DIM, np.nan), _at(75)]))
    assert clus.labels == ("S1", "S2")
    outs: list[object] = []
    for _ in range(12):
        c = clus.centroid(1)
        angle = float(np.rad2deg(np.arctan2(c[1], c[0])))
        outs.append(clus.identify(window(1), np.stack([np.full(DIM, np.nan),
                                                       _at(angle - 8)])))
    return clus, outs


def test_centroids_that_drift_together_merge_into_the_older_label() -> None:
    clus, outs = _drifting_pair(heard_together=False)
    merges = [m for out in outs for m in out.merged]  # type: ignore[attr-defined]
    assert merges == [(1, 0)]  # S2 absorbed by S1
    assert clus.anonymous_speakers == 1
    assert not clus.is_live(1)
    last = outs[-1].mapping  # type: ignore[attr-defined]
    assert [clus.labels[g] for g in last.values()] == ["S1"]
    # Labels are never handed out twice: the next new voice is S3.
    out = clus.identify(window(0), np.stack([_unit(0.0, 0.0, 1.0), np.full(DIM, np.nan)]))
    assert [clus.labels[g] for g in out.mapping.values()] == ["S3"]


def test_speakers_heard_in_one_window_never_merge() -> None:
    clus, outs = _drifting_pair(heard_together=True)
    assert all(not out.merged for out in outs)  # type: ignore[attr-defined]
    assert clus.anonymous_speakers == 2


def test_an_anonymous_speaker_unheard_for_long_is_retired_and_its_column_reused() -> None:
    v = voices(3)
    clus = OnlineClustering(options=ClusteringOptions(delta_new=0.6, retire_after=10,
                                                      reuse_after=4))
    assert step(clus, {0: v[0]}, seed=0) == {0: "S1"}
    retired = []
    for t in range(1, 14):
        out = clus.identify(window(1), np.stack([np.full(DIM, np.nan),
                                                 heard(v[1], seed=t)]))
        retired += out.retired
    assert retired == [0]
    assert clus.anonymous_speakers == 1
    # S1's voice comes back: a new label (S3), in S1's freed column.
    assert step(clus, {0: v[0]}, seed=50) == {0: "S3"}
    assert clus.num_speakers == 2
    # An enrolled person is never retired.
    named = OnlineClustering(options=ClusteringOptions(delta_new=0.6, retire_after=2),
                             voiceprints=[Voiceprint(name="Ann", embedding=v[0])])
    for t in range(6):
        step(named, {0: v[1]}, seed=t)
    assert step(named, {0: v[0]}, seed=7) == {0: "Ann"}


def test_skipped_windows_count_towards_retirement() -> None:
    v = voices(2)
    clus = OnlineClustering(options=ClusteringOptions(delta_new=0.6, retire_after=10))
    step(clus, {0: v[0]}, seed=0)
    clus.skip(10)
    out = clus.identify(window(1), np.stack([np.full(DIM, np.nan), heard(v[1], seed=1)]))
    assert out.retired == (0,)


def test_a_voice_between_two_enrolled_people_is_named_only_with_a_clear_margin() -> None:
    prints = [Voiceprint(name="Ann", embedding=_unit(1.0)),
              Voiceprint(name="Bob", embedding=_unit(0.0, 1.0))]
    between = _unit(0.7, 0.62, np.sqrt(1 - 0.7**2 - 0.62**2))  # 0.70 to Ann, 0.62 to Bob

    def label(margin: float) -> str:
        clus = OnlineClustering(options=ClusteringOptions(
            delta_new=0.2, enrolled_threshold=0.6, enrolled_margin=margin), voiceprints=prints)
        out = clus.identify(window(0), np.stack([between, np.full(DIM, np.nan)]))
        return next(clus.labels[g] for g in out.mapping.values())

    assert label(0.0) == "Ann"
    assert label(0.1) == "S1"  # within 0.1 of Bob too: unknown, not the nearest name


def test_name_voice_needs_the_threshold_and_the_margin() -> None:
    v = voices(2, seed=5)
    prints = [Voiceprint(name="Ann", embedding=_unit(1.0)),
              Voiceprint(name="Bob", embedding=_unit(0.0, 1.0))]
    between = _unit(0.7, 0.62, np.sqrt(1 - 0.7**2 - 0.62**2))
    loose = name_voice(between, prints, threshold=0.6, margin=0.0)
    assert (loose.name, loose.best) == ("Ann", "Ann")
    assert loose.score == pytest.approx(0.7)
    assert loose.margin == pytest.approx(0.08)
    strict = name_voice(between, prints, threshold=0.6, margin=0.1)
    assert (strict.name, strict.best) == (None, "Ann")
    assert name_voice(between, prints, threshold=0.9, margin=0.0).name is None
    assert name_voice(_unit(0.1, 0.99), prints, threshold=0.6, margin=0.1).name == "Bob"
    alone = name_voice(_unit(0.8, 0.6), prints[:1], threshold=0.6, margin=0.5)
    assert alone.name == "Ann"  # one enrolled voice: no rival, the margin is moot
    assert name_voice(v[0], [], threshold=0.6, margin=0.0).name is None
    assert alone.margin == np.inf
