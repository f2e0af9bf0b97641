"""Refinement in the engine: one caption_refined per final and after it, never delaying the
CTC finals, the guard's verdicts counted, failures falling back to the CTC text, refinement
before translation on the shared generation thread, and files carrying the refined text."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_models import build_tiny_ctc, speechlike_audio
from tiny_refine_models import build_tiny_whisper

from harken.app import session as factory
from harken.app.config import HarkenConfig, OutputConfig, RefineConfig
from harken.app.tasks.captions import caption_stages
from harken.app.tasks.loader import ModelLoader
from harken.app.tasks.refine import refine_stages
from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionFinal, CaptionRefined, Event, Stats, StreamError
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.sources.file import FileSource
from harken.engine.stages.translation import GenerationWorker
from harken.engine.vad import SegmentEnd, VadOptions, VadSegmenter
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.refine import RefinedText, SpeechRefiner

GUARD_OFF = HarkenConfig(refine=RefineConfig(model="fake", guard=False))
GUARD_ON = HarkenConfig(refine=RefineConfig(model="fake"))


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


class FakeRefiner:
    """Says `text` for every segment; `release` gates each call (set: no waiting)."""

    model_id = "fake-refiner"

    def __init__(self, text: str = "Hello, world.", *, fail: bool = False) -> None:
        self.text = text
        self.fail = fail
        self.release = threading.Event()
        self.release.set()
        self.calls = 0

    def refine(self, samples: np.ndarray) -> RefinedText:
        self.calls += 1
        self.release.wait(timeout=20)
        if self.fail:
            raise RuntimeError("CUDA out of memory (simulated)")
        return RefinedText(text=self.text, pieces=1)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> CtcCaptioner:
    folder = build_tiny_ctc("hubert", tmp_path_factory.mktemp("ctc") / "hubert")
    return CtcCaptioner.from_pretrained(str(folder), device="cpu")


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Four speech-like bursts with pauses; and how many segments the VAD finds."""
    rng = np.random.default_rng(1)
    parts = []
    for i in range(4):
        parts.append((1e-3 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))
        parts.append(speechlike_audio(0.9, seed=10 + i))
    parts.append((1e-3 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32))
    audio = np.concatenate(parts)
    path = tmp_path_factory.mktemp("talk") / "talk.wav"
    sf.write(str(path), audio, SAMPLE_RATE, subtype="FLOAT")
    vad = VadSegmenter(VadOptions())
    outs = []
    for s in range(0, len(audio), 1600):
        outs += vad.feed(AudioBlock(stream="x", start=s, samples=audio[s:s + 1600]))
    outs += vad.flush()
    n = sum(isinstance(o, SegmentEnd) for o in outs)
    assert n >= 3, "the fixture needs several VAD segments"
    return path, n


async def run_engine(path: Path, captioner: CtcCaptioner, refiner: object, *,
                     config: HarkenConfig, live: bool = False) -> Collect:
    sink = Collect()
    async with InferenceWorker(name="cpu") as worker, GenerationWorker(name="cpu") as gen:
        engine = Engine(sources=[FileSource(path=path, stream_id="talk", realtime=False)],
                        worker=worker,
                        stages=[caption_stages(config, captioner),
                                refine_stages(config, refiner, captioner, gen)],  # type: ignore[arg-type]
                        options=EngineOptions(live=live, levels=False))
        sub = engine.subscribe(sink.name)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sink.consume(sub))
            await engine.run()
    return sink


def pairs(sink: Collect) -> list[tuple[CaptionFinal, CaptionRefined]]:
    """Each final with its refinement, checking that the refinement came after it."""
    finals = {(e.stream, e.segment): (i, e) for i, e in enumerate(sink.events)
              if isinstance(e, CaptionFinal)}
    out = []
    for j, e in enumerate(sink.events):
        if isinstance(e, CaptionRefined):
            i, final = finals.pop((e.stream, e.segment))
            assert i < j, "a refinement overtook its final"
            assert (e.start, e.end) == (final.start, final.end)
            out.append((final, e))
    assert not finals, "a final got no refinement"
    return out


async def test_every_final_is_refined_after_it_with_aligned_words(
        captioner: CtcCaptioner, talk: tuple[Path, int]) -> None:
    path, n = talk
    sink = await run_engine(path, captioner, FakeRefiner(), config=GUARD_OFF)
    got = pairs(sink)
    assert [f.segment for f, _ in got] == list(range(n))
    for final, refined in got:
        assert refined.accepted
        assert refined.reason == "ok"
        assert refined.text == "Hello, world."
        assert refined.model == "fake-refiner"
        assert [w.word for w in refined.words] == ["Hello,", "world."]
        first, second = refined.words
        assert final.start <= first.start <= first.end <= second.start <= second.end
        assert second.end <= final.end + 0.02  # within the segment's frames
    stats = sink.of(Stats)[-1]
    assert stats.counters["refine_segments"] == n  # type: ignore[attr-defined]
    assert stats.refine_latency_p95_s is not None  # type: ignore[attr-defined]
    assert stats.counters["refine_rejected"] == 0  # type: ignore[attr-defined]


async def test_the_guard_rejects_and_the_ctc_text_stands(
        captioner: CtcCaptioner, talk: tuple[Path, int]) -> None:
    path, n = talk
    looping = "Thank you. " * 8
    sink = await run_engine(path, captioner, FakeRefiner(looping), config=GUARD_ON)
    for final, refined in pairs(sink):
        assert not refined.accepted
        assert refined.reason in ("repeats", "disagrees", "ctc_empty")
        assert (refined.text, refined.words) == (final.text, final.words)
    counters = sink.of(Stats)[-1].counters  # type: ignore[attr-defined]
    assert counters["refine_rejected"] == n
    assert counters["refine_segments"] == 0


async def test_a_failing_refiner_falls_back_and_captions_go_on(
        captioner: CtcCaptioner, talk: tuple[Path, int]) -> None:
    path, n = talk
    sink = await run_engine(path, captioner, FakeRefiner(fail=True), config=GUARD_OFF)
    errors = sink.of(StreamError)
    assert len(errors) == n
    assert "out of memory" in errors[0].message
    for final, refined in pairs(sink):
        assert refined.reason == "failed"
        assert refined.text == final.text
    assert sink.of(Stats)[-1].counters["refine_fallbacks"] == n  # type: ignore[attr-defined]


async def test_a_stuck_refiner_does_not_delay_finals_and_live_skips(
        captioner: CtcCaptioner, talk: tuple[Path, int]) -> None:
    path, n = talk
    refiner = FakeRefiner()
    refiner.release.clear()
    sink = Collect()
    original = sink.consume

    async def release_after_all_finals(events: AsyncIterable[Event]) -> None:
        async def watch() -> AsyncIterable[Event]:
            async for event in events:
                if isinstance(event, CaptionFinal) and \
                        len(sink.of(CaptionFinal)) == n - 1:
                    assert refiner.calls == 1
                    assert not sink.of(CaptionRefined)
                    refiner.release.set()
                yield event
        await original(watch())

    sink.consume = release_after_all_finals  # type: ignore[method-assign]
    async with InferenceWorker(name="cpu") as worker, GenerationWorker(name="cpu") as gen:
        engine = Engine(sources=[FileSource(path=path, stream_id="talk", realtime=False)],
                        worker=worker,
                        stages=[caption_stages(GUARD_OFF, captioner),
                                refine_stages(GUARD_OFF, refiner, captioner, gen)],  # type: ignore[arg-type]
                        options=EngineOptions(live=True, levels=False))
        sub = engine.subscribe(sink.name)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sink.consume(sub))
            await asyncio.wait_for(engine.run(), 60)
    got = pairs(sink)
    reasons = [r.reason for _, r in got]
    assert reasons[0] == "ok"
    assert reasons[-1] == "ok"
    assert reasons.count("skipped") == n - 1 - 2  # live: the 2 newest waiting ones win
    counters = sink.of(Stats)[-1].counters  # type: ignore[attr-defined]
    assert counters["refine_fallbacks"] == reasons.count("skipped")


async def test_refinement_runs_before_queued_translations() -> None:
    order: list[str] = []
    gate = threading.Event()

    def job(name: str) -> str:
        if name == "busy":
            gate.wait(timeout=10)
        order.append(name)
        return name

    async with GenerationWorker(name="cpu") as gen:
        busy = asyncio.create_task(gen.run(job, "busy"))
        await asyncio.sleep(0.05)
        translate = asyncio.create_task(gen.run(job, "translate"))
        await asyncio.sleep(0.01)
        refine = asyncio.create_task(gen.run(job, "refine", priority=0))
        await asyncio.sleep(0.01)
        gate.set()
        assert await asyncio.gather(busy, translate, refine) == ["busy", "translate", "refine"]
    assert order == ["busy", "refine", "translate"]


async def test_session_files_carry_the_refined_text(
        captioner: CtcCaptioner, talk: tuple[Path, int], tmp_path: Path) -> None:
    path, n = talk
    folder = build_tiny_whisper(tmp_path / "whisper")
    config = HarkenConfig(refine=RefineConfig(model=str(folder), guard=False, max_new_tokens=4),
                          output=OutputConfig(dir=tmp_path / "out",
                                              formats=["srt", "txt", "jsonl"]))
    refiner = SpeechRefiner.from_pretrained(str(folder), device="cpu")
    sink = Collect()
    sinks = [*factory.output_sinks(config, stem="talk", formats=config.output.formats), sink]
    session = factory.Session(config=config, sources=[FileSource(path=path, stream_id="talk",
                                                                 realtime=False)],
                              sinks=sinks, live=False,
                              models=ModelLoader(captioner=captioner, refiner=refiner))
    started = time.monotonic()
    await session.run()
    assert time.monotonic() - started < 60
    got = pairs(sink)
    assert len(got) == n
    texts = [r.text for _, r in got if r.text.strip()]
    assert texts
    assert all(r.accepted for _, r in got if r.text.strip())
    txt = (tmp_path / "out" / "talk.txt").read_text().splitlines()
    assert txt == texts  # the transcript has the refined text, not the CTC letters
    srt = (tmp_path / "out" / "talk.srt").read_text()
    for text in texts:
        assert text.split()[0] in srt
    jsonl = (tmp_path / "out" / "talk.jsonl").read_text()
    assert jsonl.count('"type": "caption_refined"') == n
