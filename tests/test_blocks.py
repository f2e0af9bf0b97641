"""The one block cutter every source uses (engine/sources/blocks.py)."""

from __future__ import annotations

import numpy as np
import pytest

from harken.engine.sources.blocks import Blocker, check_block_s


def _chunks(sizes: list[int]) -> list[np.ndarray]:
    start = 0
    out = []
    for n in sizes:
        out.append(np.arange(start, start + n, dtype=np.float32))
        start += n
    return out


def test_any_chunking_gives_the_same_blocks_on_an_unbroken_clock() -> None:
    rng = np.random.default_rng(3)
    sizes = [int(n) for n in rng.integers(0, 700, size=60)]
    blocker = Blocker(stream_id="s", block_samples=160)
    blocks = [b for chunk in _chunks(sizes) for b in blocker.push(chunk)] + blocker.flush()
    assert all(b.samples.size == 160 for b in blocks[:-1])
    assert 0 < blocks[-1].samples.size <= 160
    assert [b.start for b in blocks] == [160 * i for i in range(len(blocks))]
    joined = np.concatenate([b.samples for b in blocks])
    assert np.array_equal(joined, np.arange(sum(sizes), dtype=np.float32))
    assert {b.stream for b in blocks} == {"s"}


def test_skip_to_leaves_a_gap_and_never_goes_back() -> None:
    blocker = Blocker(stream_id="s", block_samples=100)
    first = blocker.push(np.zeros(250, dtype=np.float32)) + blocker.flush()
    assert [(b.start, b.end) for b in first] == [(0, 100), (100, 200), (200, 250)]
    blocker.skip_to(1000)  # audio lost: later blocks keep their true time
    blocker.skip_to(400)  # never backwards
    (after,) = blocker.push(np.ones(100, dtype=np.float32))
    assert (after.start, after.end) == (1000, 1100)
    assert blocker.flush() == []


@pytest.mark.parametrize("block_s", [0.0, -1.0, float("nan"), 5.0])
def test_block_length_out_of_range_is_refused(block_s: float) -> None:
    with pytest.raises(ValueError, match="block_s"):
        check_block_s(block_s)
