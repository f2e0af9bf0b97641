"""Thread budgets: torch intra-op threads for the inference worker and the generation thread.

Both run torch on their own thread, and torch's intra-op thread count is a per-thread setting
(OpenMP), so each gets its own budget, set once when its thread starts. Left to torch, each
would use every core: with translation on, the caption windows and the generation would then
ask for twice as many threads as there are cores and slow each other down (oversubscription).
The automatic budget splits the cores instead (docs/cpu.md):

- CPU, translation on: generation gets a quarter of the cores (at least 1) and runs at a
  lower scheduling priority, the inference worker gets the rest (at least 1); on 2 cores,
  1 + 1.
- CPU, translation off: the inference worker gets every core.
- CUDA: the GPU does the work; the threads only prepare inputs and launch kernels, so a few
  are enough and leave the cores to the sources, the VAD and the sinks.
Set values (compute.inference_threads, compute.generation_threads) are kept as given.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from harken.models.loading import use_threads

log = logging.getLogger(__name__)

CUDA_HOST_THREADS = 2  # per worker thread when a GPU does the compute
GENERATION_SHARE = 4  # generation gets 1/GENERATION_SHARE of the cores on CPU
GENERATION_NICE = 10  # niceness added to the generation thread on CPU (Linux): captions first


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadBudget:
    inference: int  # torch intra-op threads of the inference worker
    generation: int  # torch intra-op threads of the generation thread
    generation_nice: int = 0  # niceness added to the generation thread (0: none)

    def __post_init__(self) -> None:
        if self.inference < 1 or self.generation < 1:
            raise ValueError(f"thread budgets must be at least 1, got {self}")


def plan_threads(*, cores: int, device_type: str, translation: bool, inference: int = 0,
                 generation: int = 0) -> ThreadBudget:
    """The budget for `cores` cores; `inference`/`generation` > 0 are kept as given."""
    cores = max(1, cores)
    if device_type != "cpu":
        auto_gen = auto_inf = min(cores, CUDA_HOST_THREADS)
        nice = 0
    elif translation:
        auto_gen = max(1, cores // GENERATION_SHARE)
        auto_inf = max(1, cores - auto_gen)
        nice = GENERATION_NICE
    else:
        auto_gen = auto_inf = cores
        nice = 0
    return ThreadBudget(inference=inference or auto_inf, generation=generation or auto_gen,
                        generation_nice=nice)


def start_thread(threads: int, *, nice: int = 0) -> None:
    """Executor initializer: this thread's torch thread count, and its niceness."""
    use_threads(threads)
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        # On Linux a thread id names one thread: only this one yields the CPU.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)
    except OSError as exc:
        log.info("could not lower the priority of %s: %s", threading.current_thread().name,
                 exc)
