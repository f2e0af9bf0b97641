"""Translation in the engine: never delays captions, newest segment wins live, every segment
in files, translated subtitles per language."""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
import time
from collections.abc import AsyncIterable, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_models import build_tiny_ctc, speechlike_audio
from tiny_task_models import build_tiny_translation_model

from harken.app.config import HarkenConfig, OutputConfig, TranslationConfig
from harken.app.session import Session, output_sinks
from harken.app.tasks.captions import caption_stages
from harken.app.tasks.loader import ModelLoader
from harken.app.tasks.translation import translation_stages
from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionFinal, Event, Keyword, Stats, StreamError, Translation
from harken.engine.pipeline import Engine, EngineOptions
from harken.engine.sinks.files import TranslatedSubtitleSink, translation_cues
from harken.engine.sinks.printer import PrinterSink
from harken.engine.sources.file import FileSource
from harken.engine.stages.translation import GenerationWorker
from harken.engine.vad import SegmentEnd, VadOptions, VadSegmenter
from harken.engine.worker import InferenceWorker
from harken.models.audio import SAMPLE_RATE
from harken.models.captions import CtcCaptioner
from harken.models.translation import SpeechTranslator, TargetLanguage, TranslatedText

TARGET = TargetLanguage(code="de", token="de_DE", token_id=7)


class Timed:
    """Collects events with their arrival time; can run a callback on each."""

    name = "timed"

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []
        self.on_event: list[object] = []

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            self.events.append((time.monotonic(), event))
            for hook in self.on_event:
                hook(event)  # type: ignore[operator]

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for _, e in self.events if isinstance(e, kind)]


class BlockedTranslator:
    """Translation that takes until the test releases it."""

    model_id = "blocked"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def translate(self, samples: np.ndarray,
                  targets: Sequence[TargetLanguage]) -> list[TranslatedText]:
        self.calls += 1
        self.release.wait(timeout=10)
        return [TranslatedText(lang=t.code, text=f"call {self.calls}", token_ids=(t.token_id,))
                for t in targets]


class FailingTranslator:
    model_id = "failing"

    def translate(self, samples: np.ndarray,
                  targets: Sequence[TargetLanguage]) -> list[TranslatedText]:
        raise RuntimeError("CUDA out of memory (simulated)")


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> CtcCaptioner:
    folder = build_tiny_ctc("hubert", tmp_path_factory.mktemp("ctc") / "hubert")
    return CtcCaptioner.from_pretrained(str(folder), device="cpu")


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Five speech-like bursts with pauses; and how many segments the VAD finds."""
    rng = np.random.default_rng(1)
    parts = []
    for i in range(5):
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
    assert n >= 4, "the fixture needs several VAD segments"
    return path, n


async def run_engine(path: Path, captioner: CtcCaptioner, translator: object, *, live: bool,
                     sink: Timed) -> Engine:
    async with InferenceWorker(name="cpu") as worker, GenerationWorker(name="cpu") as gen:
        engine = Engine(sources=[FileSource(path=path, stream_id="talk", realtime=False)],
                        worker=worker,
                        stages=[caption_stages(HarkenConfig(), captioner),
                                translation_stages(translator, [TARGET], gen)],  # type: ignore[arg-type]
                        options=EngineOptions(live=live, levels=False))
        sub = engine.subscribe(sink.name)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sink.consume(sub))
            await engine.run()
    return engine


async def test_a_stuck_translator_does_not_delay_captions(
        captioner: CtcCaptioner, talk: tuple[Path, int]) -> None:
    path, n = talk
    translator = BlockedTranslator()
    sink = Timed()
    released_after: list[int] = []

    def release_once_all_captions_are_out(event: Event) -> None:
        finals = len(sink.of(CaptionFinal))
        if isinstance(event, CaptionFinal) and finals == n:
            released_after.append(translator.calls)
            translator.release.set()

    sink.on_event.append(release_once_all_captions_are_out)
    await asyncio.wait_for(run_engine(path, captioner, translator, live=True, sink=sink), 60)
    # Every caption came out while the first translation was still stuck.
    assert released_after == [1]
    finals = sink.of(CaptionFinal)
    translations = sink.of(Translation)
    assert [f.segment for f in finals] == list(range(n))  # type: ignore[attr-defined]
    # Live: the stuck segment finishes, then only the newest waiting one; the rest is skipped.
    assert [t.segment for t in translations] == [0, n - 1]  # type: ignore[attr-defined]
    by_segment = {f.segment: f for f in finals}  # type: ignore[attr-defined]
    for t in translations:
        caption = by_segment[t.segment]  # type: ignore[attr-defined]
        assert (t.start, t.end) == (caption.start, caption.end)
        assert t.lang == "de"
        assert t.model == "blocked"
    order = [e for _, e in sink.events if isinstance(e, CaptionFinal | Translation)]
    assert all(isinstance(e, CaptionFinal) for e in order[:n])
    last = sink.events[-1][1]
    assert isinstance(last, Stats)
    assert last.counters["translation_segments"] == 2
    assert last.counters["translation_segments_skipped"] == n - 2


async def test_files_translate_every_segment_in_order(
        captioner: CtcCaptioner, talk: tuple[Path, int]) -> None:
    path, n = talk
    translator = BlockedTranslator()
    translator.release.set()
    sink = Timed()
    await run_engine(path, captioner, translator, live=False, sink=sink)
    assert [t.segment for t in sink.of(Translation)] == list(range(n))  # type: ignore[attr-defined]
    assert sink.of(Stats)[-1].counters["translation_segments_skipped"] == 0  # type: ignore[attr-defined]


async def test_a_failing_translation_is_reported_and_captions_go_on(
        captioner: CtcCaptioner, talk: tuple[Path, int]) -> None:
    path, n = talk
    sink = Timed()
    await run_engine(path, captioner, FailingTranslator(), live=False, sink=sink)
    errors = sink.of(StreamError)
    assert len(errors) == n
    assert "out of memory" in errors[0].message  # type: ignore[attr-defined]
    assert len(sink.of(CaptionFinal)) == n
    assert sink.of(Stats)[-1].counters["translation_failed"] == n  # type: ignore[attr-defined]


async def test_session_writes_one_subtitle_file_per_language(
        captioner: CtcCaptioner, talk: tuple[Path, int], tmp_path: Path) -> None:
    path, n = talk
    folder = build_tiny_translation_model(tmp_path / "s2t")
    translator = SpeechTranslator.from_pretrained(str(folder), device="cpu")
    config = HarkenConfig(translation=TranslationConfig(languages=["de", "fr"], max_new_tokens=5),
                          output=OutputConfig(dir=tmp_path / "out", formats=["srt", "vtt",
                                                                             "jsonl"]))
    sink = Timed()
    sinks = [*output_sinks(config, stem="talk", formats=config.output.formats), sink]
    session = Session(config=config, sources=[FileSource(path=path, stream_id="talk",
                                                                 realtime=False)],
                              sinks=sinks, live=False,
                              models=ModelLoader(captioner=captioner, translator=translator))
    await session.run()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "talk.de.srt", "talk.de.vtt", "talk.fr.srt", "talk.fr.vtt", "talk.jsonl", "talk.srt",
        "talk.vtt"]
    translations = sink.of(Translation)
    for lang in ("de", "fr"):
        mine = [t for t in translations if t.lang == lang]  # type: ignore[attr-defined]
        assert [t.segment for t in mine] == list(range(n))  # type: ignore[attr-defined]
        texts = [t.text for t in mine if t.text.strip()]  # type: ignore[attr-defined]
        srt = (out / f"talk.{lang}.srt").read_text()
        assert srt.count(" --> ") >= len(texts)
        for text in texts:
            assert text.split()[0] in srt
        assert (out / f"talk.{lang}.vtt").read_text().startswith("WEBVTT")
    assert any(t.text for t in translations), "the tiny model should produce some text"  # type: ignore[attr-defined]


def test_long_translations_become_several_timed_cues() -> None:
    words = " ".join(f"wort{i}" for i in range(40))
    event = Translation(stream="s", start=10.0, end=18.0, segment=3, lang="de", text=words)
    cues = translation_cues(event)
    assert len(cues) > 1
    assert all(len(c.text) <= 84 for c in cues)
    assert " ".join(c.text for c in cues) == words
    assert cues[0].start == 10.0
    assert cues[-1].end == pytest.approx(18.0)
    for a, b in itertools.pairwise(cues):
        assert a.end == pytest.approx(b.start)
        assert a.start < a.end


async def test_subtitle_sink_keeps_its_language_and_printer_shows_tasks(tmp_path: Path) -> None:
    events: list[Event] = [
        Translation(stream="s", start=1.0, end=2.5, segment=0, lang="de", text="Guten Tag"),
        Translation(stream="s", start=1.0, end=2.5, segment=0, lang="fr", text="Bonjour"),
        Keyword(stream="s", start=3.0, end=3.4, keyword="stop", score=0.97, segment=1),
    ]

    async def feed() -> AsyncIterable[Event]:
        for e in events:
            yield e

    srt = TranslatedSubtitleSink(path=tmp_path / "a.de.srt", lang="de", fmt="srt")
    await srt.consume(feed())
    assert (tmp_path / "a.de.srt").read_text() == (
        "1\n00:00:01,000 --> 00:00:02,500\nGuten Tag\n\n")
    out = io.StringIO()
    await PrinterSink(stream=out, tty=False).consume(feed())
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("[de] Guten Tag")
    assert lines[1].endswith("[fr] Bonjour")
    assert lines[2].endswith("keyword: stop (0.97)")
