"""Thread budgets: planned from the cores, and applied to the worker threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from harken.app.config import ComputeConfig, HarkenConfig
from harken.app.session import thread_budget
from harken.engine.stages.translation import GenerationWorker
from harken.engine.threads import GENERATION_NICE, CoreShare, ThreadBudget, plan_threads
from harken.engine.worker import InferenceWorker


class ThreadProbe:
    """A 'model' that reports the torch threads of the thread it runs on."""

    batchable = True

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.array([torch.get_num_threads()]) for _ in windows]


@pytest.mark.parametrize(
    ("cores", "device", "translation", "want"),
    [(2, "cpu", True, (2, 1, 1)), (2, "cpu", False, (2, 2, 0)), (16, "cpu", True, (16, 4, 4)),
     (1, "cpu", True, (1, 1, 0)), (16, "cuda", True, (2, 2, 0))])
def test_the_automatic_budget_never_oversubscribes_the_cores(
        cores: int, device: str, translation: bool, want: tuple[int, int, int]) -> None:
    budget = plan_threads(cores=cores, device_type=device, translation=translation)
    assert (budget.inference, budget.generation, budget.lend) == want
    if device == "cpu" and translation and cores > 1:
        # While translating the worker lends threads: together they fit the cores.
        assert budget.inference - budget.lend + budget.generation <= cores
        assert budget.generation_nice == GENERATION_NICE


def test_configured_counts_are_kept() -> None:
    config = HarkenConfig(compute=ComputeConfig(inference_threads=3, generation_threads=2),
                          translation={"languages": ["de"]})
    assert thread_budget(config, device_type="cpu") == ThreadBudget(
        inference=3, generation=2, generation_nice=GENERATION_NICE, lend=0)
    with pytest.raises(ValueError, match="at least 1"):
        ThreadBudget(inference=0, generation=1)


def test_each_worker_thread_runs_with_its_own_budget() -> None:
    main_before = torch.get_num_threads()

    async def go() -> tuple[int, int, int, int]:
        async with InferenceWorker(name="t", threads=3) as worker, \
                GenerationWorker(name="t", threads=1, nice=GENERATION_NICE) as generator:
            # Each executor thread starts at its first call (here the generation one first)
            # and keeps its own count when the other one sets a different one.
            gen = await generator.run(torch.get_num_threads)
            inf = int((await worker.encode(ThreadProbe(), np.zeros(4, np.float32)))[0])
            gen_again = await generator.run(torch.get_num_threads)
            inf_again = int((await worker.encode(ThreadProbe(), np.zeros(4, np.float32)))[0])
            return inf, gen, inf_again, gen_again

    try:
        assert asyncio.run(go()) == (3, 1, 3, 1)
    finally:
        torch.set_num_threads(main_before)


def test_the_worker_lends_threads_while_a_generation_runs() -> None:
    share = CoreShare(budget=ThreadBudget(inference=2, generation=1, lend=1))
    main_before = torch.get_num_threads()
    release = threading.Event()

    async def go() -> tuple[int, int, int]:
        async with InferenceWorker(name="t", threads=2, share=share) as worker, \
                GenerationWorker(name="t", threads=1, share=share) as generator:
            before = int((await worker.encode(ThreadProbe(), np.zeros(4, np.float32)))[0])
            generating = asyncio.ensure_future(generator.run(release.wait, 10.0))
            await asyncio.sleep(0.05)  # the generation is running now
            during = int((await worker.encode(ThreadProbe(), np.zeros(4, np.float32)))[0])
            release.set()
            await generating
            after = int((await worker.encode(ThreadProbe(), np.zeros(4, np.float32)))[0])
            return before, during, after

    try:
        assert asyncio.run(go()) == (2, 1, 2)
    finally:
        torch.set_num_threads(main_before)


def test_refinement_splits_the_cores_without_lowering_the_priority() -> None:
    """Refined finals have a latency target: the generation thread gets the translation split
    but no added niceness (a niced thread waits behind every busy process on the machine)."""
    budget = plan_threads(cores=2, device_type="cpu", translation=True, refine=True)
    assert budget == ThreadBudget(inference=2, generation=1, generation_nice=0, lend=1)
    refining = HarkenConfig(refine={"model": "some/whisper"})
    assert thread_budget(refining, device_type="cpu").generation_nice == 0
    both = HarkenConfig(refine={"model": "some/whisper"}, translation={"languages": ["de"]})
    assert thread_budget(both, device_type="cpu").generation_nice == 0
    translating = HarkenConfig(translation={"languages": ["de"]})
    assert thread_budget(translating, device_type="cpu").generation_nice == GENERATION_NICE
