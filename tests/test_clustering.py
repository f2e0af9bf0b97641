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
