"""Thread budgets: torch intra-op threads for the inference worker and the generation thread.

Both run torch on a thread of their own, and torch's intra-op thread count can be set per
thread (OpenMP and MKL keep it per thread), so each gets its own budget, set once when its
thread starts. Left to torch, each would use every core: with translation on, caption
windows and generation would then ask for twice as many threads as there are cores and slow
each other down (oversubscription). The automatic budget splits the cores instead
(docs/cpu.md):

- CPU, translation on: generation gets a quarter of the cores (at least 1) and a lower
  scheduling priority. The inference worker gets every core while nothing is being
  translated, and lends generation its threads while a segment is (`CoreShare`: the worker
  sets its count before each forward pass). On 2 cores: 2 threads for the worker, 1 + 1
  while translating. Measured demand on 2 cores (docs/cpu.md): captions, speakers and
  keywords need more than one core between them, translation much less, so a fixed 1 + 1
  split would starve the worker.
- CPU, refinement on (captions re-decoded on the generation thread, docs/refine.md): the
  same split, without the lower priority. A refined final has a latency target (3 s after
  the end of speech), and a niced thread waits behind every other busy process: on a shared
  2-core machine the refined-final p95 went from 2.5 s to 19 s with niceness 10. Captions
  keep their share anyway: the worker lends the generation its thread only while it runs.
- CPU, translation off: the inference worker gets every core.
- CUDA: the GPU does the work; the threads only prepare inputs and launch kernels, so two
  each are enough and leave the cores to the sources, the VAD and the sinks.

Values set in the configuration (compute.inference_threads, compute.generation_threads) are
kept as given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

CUDA_HOST_THREADS = 2  # threads per worker when a GPU does the compute
GENERATION_SHARE = 4  # on CPU, generation gets 1/GENERATION_SHARE of the cores (at least 1)
GENERATION_NICE = 10  # niceness added to the generation thread on CPU: captions come first


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers may narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks on this OS
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadBudget:
    inference: int  # torch intra-op threads of the inference worker
    generation: int  # torch intra-op threads of the generation thread
    generation_nice: int = 0  # niceness added to the generation thread (0: none)
    lend: int = 0  # threads the worker gives up while a generation runs

    def __post_init__(self) -> None:
        if self.inference < 1 or self.generation < 1 or self.generation_nice < 0 \
                or not 0 <= self.lend < self.inference:
            raise ValueError(f"thread budgets must be at least 1, got {self}")


def plan_threads(*, cores: int, device_type: str, translation: bool, refine: bool = False,
                 inference: int = 0, generation: int = 0) -> ThreadBudget:
    """The budget for `cores` cores; `inference` or `generation` above 0 is kept as given.
    `translation`: the generation thread runs (translation or refinement); `refine`: it
    refines captions (no added niceness, see above)."""
    if inference < 0 or generation < 0:
        raise ValueError("thread counts must be 0 (auto) or more")
    cores = max(1, cores)
    if device_type != "cpu":
        auto_inf = auto_gen = min(cores, CUDA_HOST_THREADS)
        nice = 0
    elif translation:
        auto_gen = max(1, cores // GENERATION_SHARE)
        auto_inf = cores
        nice = 0 if refine else GENERATION_NICE
    else:
        auto_inf = auto_gen = cores
        nice = 0
    inf, gen = inference or auto_inf, generation or auto_gen
    lend = 0
    if device_type == "cpu" and translation and not inference:
        # Only what the automatic budget takes from the cores is lent back.
        lend = max(0, min(inf - 1, inf + gen - cores))
    return ThreadBudget(inference=inf, generation=gen, generation_nice=nice, lend=lend)


class CoreShare:
    """The cores the inference worker and the generation thread share.

    The worker asks `inference_threads()` before each forward pass: its whole budget while no
    generation runs, `lend` fewer while one does, so that together they never ask for more
    threads than the budget allows, and captions use every core when nothing is translated.
    Counted on the event loop's thread only.
    """

    def __init__(self, *, budget: ThreadBudget) -> None:
        self.budget = budget
        self._generating = 0

    def inference_threads(self) -> int:
        lent = self.budget.lend if self._generating else 0
        return self.budget.inference - lent

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        self._generating += 1
        try:
            yield
        finally:
            self._generating -= 1


def set_thread_count(threads: int) -> None:
    """The calling thread's torch threads, when they differ (a cheap check per batch)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def start_thread(threads: int, nice: int = 0) -> None:
    """Executor initializer: the calling thread's torch threads, and its niceness."""
    # Imported here: the engine's modules load without torch until a worker thread starts.
    from harken.models.loading import use_threads

    use_threads(threads)
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        # On Linux a thread id names one thread: only this one yields the CPU.
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.info("could not lower the priority of %s: %s", threading.current_thread().name,
                 exc)


def model_thread(prefix: str, threads: int | None, nice: int = 0) -> ThreadPoolExecutor:
    """The one thread a worker runs its model calls on; with `threads`, it sets its own
    torch thread count (and niceness) as it starts."""
    if threads is None:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=prefix)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=prefix,
                              initializer=start_thread, initargs=(threads, nice))
