"""Keyword spotting in the engine: VAD gating, triggers, batching, determinism, live skips."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_models import speechlike_audio
from tiny_task_models import build_tiny_keyword_model

from harken.app.config import HarkenConfig, KeywordsConfig
from harken.app.tasks.keywords import keyword_options, keyword_stages
from harken.engine.audio import AudioBlock
from harken.engine.events import Event, Keyword
from harken.engine.metrics import ArrivalLog
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.sources.file import FileSource
from harken.engine.stages.keywords import KeywordStage, SpottingOptions
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions, VadSegmenter
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.keywords import KeywordSpotter
from harken.models.triggers import TriggerOptions

NOISE = 1e-3  # silence floor: below the VAD, but not exact zeros (see the gating test)


class Recording:
    """A KeywordSpotter that remembers every window it was given."""

    def __init__(self, inner: KeywordSpotter) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.labels = inner.labels
        self.batchable = inner.batchable
        self.windows: list[np.ndarray] = []

    def encode(self, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.windows += [np.array(w) for w in windows]
        return self.inner.encode(windows)


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            self.events.append(event)

    @property
    def hits(self) -> list[Keyword]:
        return [e for e in self.events if isinstance(e, Keyword)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeywordSpotter]:
    root = tmp_path_factory.mktemp("kw")
    return {"random": KeywordSpotter.from_pretrained(
                str(build_tiny_keyword_model(root / "random")), device="cpu"),
            "yes": KeywordSpotter.from_pretrained(
                str(build_tiny_keyword_model(root / "yes", favour="yes")), device="cpu")}


@pytest.fixture(scope="module")
def bursts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]]]:
    """Three 0.8 s speech-like bursts in 2.5 s of near-silence; and the VAD's segments."""
    rng = np.random.default_rng(0)
    parts = []
    for i in range(3):
        parts.append((NOISE * rng.standard_normal(round(2.5 * SAMPLE_RATE))).astype(np.float32))
        parts.append(speechlike_audio(0.8, seed=i))
    parts.append((NOISE * rng.standard_normal(round(2.5 * SAMPLE_RATE))).astype(np.float32))
    audio = np.concatenate(parts)
    path = tmp_path_factory.mktemp("audio") / "bursts.wav"
    sf.write(str(path), audio, SAMPLE_RATE, subtype="FLOAT")
    vad = VadSegmenter(VadOptions())
    outs = []
    block = SAMPLE_RATE // 10
    for s in range(0, len(audio), block):
        outs += vad.feed(AudioBlock(stream="x", start=s, samples=audio[s:s + block]))
    outs += vad.flush()
    starts = {o.segment: o.start for o in outs if isinstance(o, SegmentStart)}
    segments = [(starts[o.segment], o.end) for o in outs if isinstance(o, SegmentEnd)]
    assert len(segments) == 3, "the fixture needs the VAD to find each burst"
    return path, segments


async def spot(spotter: KeywordStage | object, path: Path, config: HarkenConfig, *,
               live: bool = False) -> tuple[Collect, Engine]:
    collect = Collect()
    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[FileSource(path=path, stream_id="s", realtime=False)],
                        worker=worker, stages=[keyword_stages(config, spotter)],  # type: ignore[arg-type]
                        options=EngineOptions(live=live, levels=False))
        sub = engine.subscribe(collect.name)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(collect.consume(sub))
            await engine.run()
    return collect, engine


def config(**keywords: object) -> HarkenConfig:
    return HarkenConfig(keywords=KeywordsConfig(enabled=True, **keywords))  # type: ignore[arg-type]


async def test_each_spoken_burst_fires_once_and_silence_is_never_scored(
        models: dict[str, KeywordSpotter],
        bursts: tuple[Path, list[tuple[int, int]]]) -> None:
    path, segments = bursts
    recording = Recording(models["yes"])  # says "yes" (p ~ 1) to every window it sees
    collect, engine = await spot(recording, path, config(words=["yes", "no"]))
    hits = collect.hits
    # One hit per burst, in its own segment: patience and re-arming hold it to one.
    assert [h.segment for h in hits] == [0, 1, 2]
    for hit, (start, end) in zip(hits, segments, strict=True):
        assert hit.keyword == "yes"
        assert hit.score > 0.99
        assert hit.start < end / SAMPLE_RATE
        assert hit.end > start / SAMPLE_RATE
        assert hit.model == models["yes"].model_id
    # VAD gating: every window scored holds >= min_speech_s of segment audio; audio outside
    # segments reaches the model as zeros (the 7.5 s of near-silence is never scored).
    need = round(0.5 * SAMPLE_RATE)
    assert recording.windows
    for w in recording.windows:
        assert len(w) == SAMPLE_RATE
        assert np.count_nonzero(w) >= need
    stage = engine.streams["s"].stages[0]
    assert isinstance(stage, KeywordStage)
    assert stage.scored == len(recording.windows) == engine.worker.stats.windows
    assert stage.hits == 3
    assert stage.skipped == 0
    speech_s = sum(e - s for s, e in segments) / SAMPLE_RATE
    assert stage.scored <= (speech_s + 3 * 1.0) / 0.2 + 3
    # Windows due together (at a segment's end) shared forward passes.
    assert engine.worker.stats.max_batch_seen > 1


async def test_files_give_the_same_hits_every_run(models: dict[str, KeywordSpotter],
                                                 bursts: tuple[Path, list[tuple[int, int]]]
                                                 ) -> None:
    path, _ = bursts
    cfg = config(threshold=0.05, patience=1, hop_s=0.1)  # random weights: low bar, many hits
    runs = []
    for _ in range(2):
        collect, _engine = await spot(models["random"], path, cfg)
        runs.append([(h.keyword, h.start, h.end, h.score, h.segment) for h in collect.hits])
    assert runs[0], "the low threshold should let the random model fire"
    assert runs[0] == runs[1]


async def test_background_labels_never_fire(models: dict[str, KeywordSpotter],
                                           bursts: tuple[Path, list[tuple[int, int]]]) -> None:
    path, _ = bursts
    collect, _engine = await spot(models["random"], path, config(threshold=0.01, patience=1))
    assert collect.hits
    assert not {h.keyword for h in collect.hits} & {"_silence_", "_unknown_"}


@pytest.mark.parametrize("live", [False, True])
async def test_live_scores_the_newest_windows_and_counts_the_rest(
        models: dict[str, KeywordSpotter], live: bool) -> None:
    spotting = SpottingOptions(hop_s=0.2, max_windows_per_step=16)
    async with InferenceWorker(name="cpu") as worker:
        stage = KeywordStage(stream="s", spotter=models["random"], worker=worker,
                             keywords=["yes"], trigger=TriggerOptions(), options=spotting,
                             live=live, arrivals=ArrivalLog())
        stage.on_start(SegmentStart(0, 0))
        stage.on_audio(SegmentAudio(0, 0, speechlike_audio(5.0)))
        await stage.step()  # 5 s arrived at once: windows at 0.0, 0.2, ... 4.0 s are due
    due = 21
    if live:
        assert (stage.scored, stage.skipped) == (16, due - 16)
    else:
        assert (stage.scored, stage.skipped) == (due, 0)
    assert stage.counters()["keyword_windows_skipped"] == stage.skipped


def test_keyword_options_map_config_to_labels(models: dict[str, KeywordSpotter]) -> None:
    labels = models["random"].labels
    words, trigger, spotting = keyword_options(
        config(words=["Yes"], thresholds={"STOP": 0.9}, patience=3, hop_s=0.1), labels,
        model_id="m")
    assert words == ("yes", "stop")  # a keyword with its own threshold is spotted too
    assert trigger.thresholds == {"stop": 0.9}
    assert trigger.patience == 3
    assert spotting.hop_samples == SAMPLE_RATE // 10
