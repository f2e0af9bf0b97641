"""The memory glibc's malloc keeps after a free, given back to the OS on long runs.

Measured with `harken bench soak` (docs/memory.md): over a run, the memory the process *uses*
stays flat (glibc's mallinfo2 `uordblks`, ~205 MB with the tiny models) while the memory
glibc has *freed but keeps resident* (`fordblks`) grows, 38 -> 137 MB in 12 minutes, and RSS
grows with it (+110 MB / 10 min under heavy load; jemalloc, LD_PRELOAD, +19 on the same
run). The cause is how glibc
serves the engine's buffers:

- After warm-up, glibc's dynamic mmap threshold has risen (each free of a mapped block
  raises it to that block's size, up to 32 MB), so tensors and audio buffers of every size
  come from arena heaps. Windows and segments have ever-new lengths, so the holes they
  leave rarely fit the next request exactly and the heaps' high-water marks creep up.
- An arena heap only shrinks from its top: free pages below a live block stay resident
  until `malloc_trim`. Every thread that allocates (inference, generation, VAD, executors)
  has such heaps.

`HeapTrimmer` calls `malloc_trim(0)` every `interval_s` (off the event loop), which gives
the free pages of every arena back (madvise). Measured cost: 11.6 ms per call on average
(47.5 ms at most) over the hour-long soak, on a worker thread; on HuBERT base (int8,
2 to 3.5 s windows of distinct lengths) a trim after every 4th window left CPU time
unchanged (7.3 / 6.7 s vs 7.2 / 6.8 s for 40 windows) and RSS at 1.04 GB instead of
1.6-2.1 GB. Pinning the mmap threshold instead (mallopt M_MMAP_THRESHOLD = 128 kB, so
large blocks are unmapped when freed) also slows the growth, but costs 10x the page faults
and +58% CPU time on that model: not done. Where the C library is not glibc (musl, macOS,
Windows) or another allocator is preloaded, the trimmer does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# s between malloc_trim calls: every 5 s kept an hour's soak flat (0.2 MB / 10 min), every
# 30 s did not (3.3), for +1% CPU (docs/memory.md)
HEAP_TRIM_INTERVAL_S = 5.0


@functools.cache
def _glibc() -> Any | None:
    """glibc's libc, or None on another C library (or OS)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # gnu_get_libc_version exists in glibc only: musl has malloc but not these semantics.
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "malloc_trim"):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def glibc_malloc() -> bool:
    """True when this process allocates with glibc's malloc (the only one tuned here)."""
    return _glibc() is not None and "jemalloc" not in os.environ.get("LD_PRELOAD", "") \
        and "tcmalloc" not in os.environ.get("LD_PRELOAD", "")


def trim_heap() -> bool:
    """Gives the free pages of every glibc arena back to the OS; True if any were."""
    libc = _glibc()
    if libc is None or not glibc_malloc():
        return False
    return bool(libc.malloc_trim(0))


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass
class TrimStats:
    trims: int = 0
    released_bytes: int = 0  # RSS before minus after, summed (what each trim gave back)
    busy_s: float = 0.0  # wall time inside malloc_trim (it holds each arena's lock in turn)
    max_s: float = 0.0


class HeapTrimmer:
    """`malloc_trim(0)` every `interval_s` on a thread of its own, while `run()` runs."""

    def __init__(self, *, interval_s: float = HEAP_TRIM_INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError(f"heap trim interval must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.stats = TrimStats()

    @property
    def active(self) -> bool:
        return glibc_malloc()

    def trim_once(self) -> None:
        before = rss_bytes()
        started = time.perf_counter()
        trim_heap()
        took = time.perf_counter() - started
        self.stats.trims += 1
        self.stats.released_bytes += max(0, before - rss_bytes())
        self.stats.busy_s += took
        self.stats.max_s = max(self.stats.max_s, took)

    async def run(self) -> None:
        """Trims until cancelled; returns at once where there is nothing to trim."""
        if not self.active:
            return
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.to_thread(self.trim_once)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@dataclass(frozen=True, slots=True, kw_only=True)
class HeapUsage:
    in_use_bytes: int  # allocated and not freed (arenas + mapped blocks)
    free_bytes: int  # freed but still held by malloc (resident until trimmed or reused)
    mapped_bytes: int  # of in_use_bytes, blocks with a mapping of their own


def heap_usage() -> HeapUsage | None:
    """glibc's own account of its heap (mallinfo2, glibc 2.33+); None elsewhere. It walks
    every arena under its lock: for a sample every few seconds, not per call."""
    libc = _glibc()
    if libc is None or not glibc_malloc() or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return HeapUsage(in_use_bytes=int(info.uordblks + info.hblkhd),
                     free_bytes=int(info.fordblks), mapped_bytes=int(info.hblkhd))
