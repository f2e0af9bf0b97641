"""The ordering contract (README): per stream, speech_started < partials < speech_ended <
caption_final < that segment's annotations (translations...), whatever the timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
from test_pipeline import ListSource, SegmentEcho, sample

from harken.engine.audio import AudioBlock
from harken.engine.events import (
    CaptionFinal,
    CaptionPartial,
    Event,
    SpeechEnded,
    SpeechStarted,
    Stats,
    Translation,
)
from harken.engine.pipeline import MAX_HELD_EVENTS, Engine, EngineOptions
from harken.engine.stages.base import Stage, StageContext
from harken.engine.stages.translation import GenerationWorker, TranslationStage
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart, VadOptions, clip_segments
from harken.engine.worker import InferenceWorker
from harken.models.translation import TargetLanguage, TranslatedText

TARGETS = (TargetLanguage(code="de", token="de_DE", token_id=7),
           TargetLanguage(code="fr", token="fr_XX", token_id=8))
PACE_S = 0.002  # s between blocks: 60x faster than real time


class InstantTranslator:
    """Translates at once, so its result is ready before the segment's final is out."""

    model_id = "instant"

    def translate(self, samples: np.ndarray,
                  targets: Sequence[TargetLanguage]) -> list[TranslatedText]:
        return [TranslatedText(lang=t.code, text=f"{t.code} {len(samples)}", token_ids=())
                for t in targets]


class PartialEcho(SegmentEcho):
    """Echo with a partial per step, to check partials stay inside their segment."""

    def on_audio(self, audio: SegmentAudio) -> None:
        super().on_audio(audio)
        self.open = audio.segment

    async def step(self) -> list[Event]:
        seg = getattr(self, "open", None)
        if seg is None:
            return []
        return [CaptionPartial(stream=self.stream, start=0.0, end=0.0, segment=seg,
                               text=str(self.samples[seg]))]

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        self.open = None
        return await super().on_end(end)


class PacedSource(ListSource):
    """ListSource with a short pause per block: a live run drops a stream's blocks when its
    queue is full, and this test is about order, not about keeping up."""

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        async for block in super().blocks():
            await asyncio.sleep(PACE_S)
            yield block


class SlowEnd:
    """Closes each segment slowly, like the speakers stage analysing its last frames."""

    name = "slow-end"

    def __init__(self, ctx: StageContext) -> None:
        pass

    def on_start(self, start: object) -> None: ...
    def on_audio(self, audio: object) -> None: ...

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        await asyncio.sleep(0.05)  # the translation thread finishes meanwhile
        return []

    def counters(self) -> dict[str, int]:
        return {}

    def latencies(self) -> dict[str, float | None]:
        return {}

    def background(self) -> None:
        return None


class Collect:
    name = "collect"

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def consume(self, events: AsyncIterable[Event]) -> None:
        async for event in events:
            self.events.append(event)


async def run(*, live: bool, captions: bool = True) -> list[Event]:
    collect = Collect()
    async with InferenceWorker(name="cpu") as worker, GenerationWorker(name="cpu") as gen:
        def translation(ctx: StageContext) -> Stage:
            return TranslationStage(stream=ctx.stream, translator=InstantTranslator(),
                                    generator=gen, live=ctx.live, arrivals=ctx.arrivals,
                                    targets=TARGETS)

        stages: list[Any] = [PartialEcho] if captions else []
        engine = Engine(sources=[PacedSource({"a": np.tile(sample(), 2), "b": sample()})],
                        stages=[*stages, translation, SlowEnd], worker=worker,
                        options=EngineOptions(live=live, levels=False,
                                              vad=VadOptions(engine="webrtc")))
        sub = engine.subscribe(collect.name, maxsize=10_000)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(collect.consume(sub))
            await engine.run()
    return collect.events


def check_contract(events: list[Event]) -> int:
    """Asserts the contract on every stream; returns how many segments it covered."""
    segments = 0
    for stream in {e.stream for e in events}:
        mine = [e for e in events if e.stream == stream and hasattr(e, "segment")]
        for seg in sorted({e.segment for e in mine}):  # type: ignore[attr-defined]
            order = [e.type for e in mine if e.segment == seg]  # type: ignore[attr-defined]
            kinds = (SpeechStarted, CaptionPartial, SpeechEnded, CaptionFinal, Translation)
            rank = {kind.type: i for i, kind in enumerate(kinds)}
            ranks = [rank[t] for t in order]
            assert ranks == sorted(ranks), f"{stream} segment {seg}: {order}"
            assert order.count("speech_started") == order.count("speech_ended") == 1
            segments += 1
    return segments


@pytest.mark.parametrize("live", [True, False])
async def test_a_segments_translations_follow_its_final(live: bool) -> None:
    events = await run(live=live)
    finals = [e for e in events if isinstance(e, CaptionFinal)]
    translations = [e for e in events if isinstance(e, Translation)]
    vad = VadOptions(engine="webrtc")
    expected = len(clip_segments(np.tile(sample(), 2), vad)) + len(clip_segments(sample(), vad))
    assert expected >= 4
    assert len(finals) == expected  # one final per VAD segment of both streams
    # Every segment was translated into both languages (none skipped: they come one by one).
    assert len(translations) == 2 * len(finals)
    assert any(isinstance(e, CaptionPartial) for e in events)
    assert check_contract(events) == 6


async def test_annotations_are_released_without_a_caption_stage() -> None:
    """Translation without captions: there is no final to wait for, only the segment's end."""
    events = await run(live=True, captions=False)
    assert not any(isinstance(e, CaptionFinal) for e in events)
    assert len([e for e in events if isinstance(e, Translation)]) == 12
    assert check_contract(events) == 6


class Chatty:
    """Emits many annotations of each segment while it is still open."""

    name = "chatty"
    per_segment = MAX_HELD_EVENTS + 6

    def __init__(self, ctx: StageContext) -> None:
        self.stream = ctx.stream
        self._started: asyncio.Queue[int | None] = asyncio.Queue()

    def on_start(self, start: SegmentStart) -> None:
        self._started.put_nowait(start.segment)

    def on_audio(self, audio: object) -> None: ...

    async def step(self) -> list[Event]:
        return []

    async def on_end(self, end: SegmentEnd) -> list[Event]:
        return []

    def on_stream_end(self) -> None:
        self._started.put_nowait(None)

    def counters(self) -> dict[str, int]:
        return {}

    def latencies(self) -> dict[str, float | None]:
        return {}

    def background(self) -> AsyncIterator[Event]:
        return self._chat()

    async def _chat(self) -> AsyncIterator[Event]:
        while (segment := await self._started.get()) is not None:
            for i in range(self.per_segment):
                yield Translation(stream=self.stream, start=0.0, end=0.0, segment=segment,
                                  lang="de", text=str(i))


async def test_held_annotations_are_bounded_and_none_is_lost() -> None:
    collect = Collect()
    async with InferenceWorker(name="cpu") as worker:
        engine = Engine(sources=[PacedSource({"s": sample()})], stages=[SegmentEcho, Chatty],
                        worker=worker, options=EngineOptions(live=True, levels=False,
                                                             vad=VadOptions(engine="webrtc")))
        sub = engine.subscribe(collect.name, maxsize=10_000)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(collect.consume(sub))
            await engine.run()
    finals = [e for e in collect.events if isinstance(e, CaptionFinal)]
    assert len(finals) == 2
    for final in finals:
        mine = [e for e in collect.events
                if isinstance(e, Translation) and e.segment == final.segment]
        assert [int(t.text) for t in mine] == list(range(Chatty.per_segment))
        # One more than MAX_HELD_EVENTS waiting sent them all out early (counted, in order);
        # the rest waited for the final again.
        after = collect.events[collect.events.index(final):]
        assert sum(1 for e in after if e in mine) == Chatty.per_segment - MAX_HELD_EVENTS - 1
    stats = [e for e in collect.events if isinstance(e, Stats)][-1]
    assert stats.counters["order_held_overflow"] == 2 * (MAX_HELD_EVENTS + 1)
