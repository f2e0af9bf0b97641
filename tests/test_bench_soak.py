"""`harken bench soak`: its figures are computed right, and a short run over a restarting
broker with a hostile publisher loses no final."""

from __future__ import annotations

import asyncio
import sys

import pytest
from mosquitto import MOSQUITTO, SKIP_REASON

from harken.app.bench.soak import (
    FinalLedger,
    LagHistogram,
    LatencyWindows,
    SoakOptions,
    cancel_all,
    latency_drift,
    rss_mb,
    rss_parts_mb,
    slope_per_10min,
    soak,
)


def test_slope_is_mb_per_10_minutes() -> None:
    samples = [(t, 500.0 + 0.001 * t) for t in range(0, 3600, 10)]  # 0.6 MB per 10 min
    assert slope_per_10min(samples) == pytest.approx(0.6)
    assert slope_per_10min(samples[:2]) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
def test_rss_splits_into_anonymous_and_file_backed() -> None:
    parts = rss_parts_mb()
    assert parts is not None
    anon, file = parts
    assert anon > 0
    assert file > 0
    assert anon + file == pytest.approx(rss_mb(), rel=0.1)  # shared memory is the rest


def test_lag_histogram_percentiles_in_constant_memory() -> None:
    lags = LagHistogram()
    size = lags.counts.size
    for i in range(1000):
        lags.add(0.001 if i < 990 else 0.050)  # 1 ms, and 1% at 50 ms
    lags.add(60.0)  # beyond the last bin: counted there, the maximum is exact
    assert lags.counts.size == size
    assert lags.percentile(50) == pytest.approx(1.1)
    assert lags.percentile(99.5) == pytest.approx(50.1)
    assert lags.max_ms == 60_000.0


def test_latency_drift_compares_the_first_and_last_window() -> None:
    points = [(float(t), 0.2) for t in range(60, 660)] + \
        [(float(t), 0.22) for t in range(660, 1260)]
    drift = latency_drift(points, start_s=60.0, end_s=1260.0)
    assert drift["window_s"] == 600.0
    assert drift["first_median_s"] == pytest.approx(0.2)
    assert drift["drift_pct"] == pytest.approx(10.0)


def test_final_ledger_keeps_only_unmatched_ids_however_many_finals() -> None:
    ledger = FinalLedger(recent_kept=50)
    for i in range(20_000):  # hours of finals, received in either order
        key = ("sat0", i, i * 2.5)
        if i % 2:
            ledger.produce(key)
            ledger.receive(key)
        else:
            ledger.receive(key)
            ledger.produce(key)
    assert ledger.kept == 50  # the recent matched ids, nothing else
    ledger.receive(("sat0", 19_999, 49_997.5))  # a QoS 1 redelivery
    ledger.produce(("room", 1, 1.0))  # produced, never received
    ledger.receive(("room", 7, 7.0))  # received, never produced
    assert (ledger.produced, ledger.received) == (20_001, 20_001)
    assert ledger.duplicates == 1
    assert ledger.messages == 20_002
    assert ledger.missing == [("room", 1, 1.0)]
    assert ledger.unproduced == 1


def test_latency_windows_stay_bounded_and_keep_first_and_last() -> None:
    windows = LatencyWindows(start_s=60.0, window_s=600.0)
    for t in range(0, 36_000):  # ten hours, a final a second
        windows.add(float(t), 0.2 if t < 660 else 0.3)
    assert len(windows.first) <= 660
    assert len(windows.last) <= 661
    drift = latency_drift(windows.points(), start_s=60.0, end_s=35_999.0)
    assert drift["finals_first"] == 600
    assert drift["finals_last"] == 601
    assert drift["drift_pct"] == pytest.approx(50.0)


async def test_cancel_all_ends_a_task_that_waits_again_after_its_cancel() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cancels = 0

    async def like_aiomqtt_exit() -> None:  # waits, untimed, in its cleanup
        nonlocal cancels
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancels += 1
            await never  # the second cancel ends this
            raise

    async def polite() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(like_aiomqtt_exit()), asyncio.create_task(polite())]
    await asyncio.sleep(0)
    assert await cancel_all(tasks, grace_s=0.05) == 0
    assert all(task.cancelled() for task in tasks)
    assert cancels == 1


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
async def test_a_short_soak_loses_no_final_across_broker_restarts() -> None:
    result = await soak(SoakOptions(minutes=0.3, satellites=1, restart_every_s=6.0),
                        verbose=False)
    assert result["broker_restarts"] >= 2
    assert result["finals"]["produced"] >= 2
    assert result["finals"]["lost"] == 0
    assert result["rejected"]["satellite_frames"]["malformed"] > 0
    assert result["rejected"]["mqtt_messages"]["invalid_json"] > 0
    assert result["reconnects"]["sink"] >= 2
    assert set(result["latency"]) >= {"room", "sat0"}
    assert result["heap"]["trim_interval_s"] == 5.0  # the engine's default trimmer ran
