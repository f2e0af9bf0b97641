"""Joining: a short segment that follows the previous one without a pause (a cut inside
speech) is decoded together with it, and its text is what follows the previous refined text;
anything else is decoded alone, as is a joined decode that does not repeat the previous text."""

from __future__ import annotations

import numpy as np
import pytest

from harken.engine.audio import AudioBlock
from harken.engine.events import CaptionRefined
from harken.engine.metrics import ArrivalLog, ClosedSegment, FinalLog
from harken.engine.stages.refine import RefineStage, RefineStageOptions
from harken.engine.stages.translation import GenerationWorker
from harken.engine.vad import SegmentAudio, SegmentEnd, SegmentStart
from harken.models.guard import GuardOptions
from harken.models.refine import RefinedText
from harken.models.scoring import text_after

# Segment 1 abuts segment 0 and is short: joined. Segment 2 follows a 0.5 s pause, segment 3
# abuts segment 2 but is longer than join_short_s: both alone.
SEGMENTS = [(16_000, 64_000), (64_000, 80_000), (88_000, 99_200), (99_200, 155_200)]
BLOCK = 1_600


class Scripted:
    """Says a fixed text per span of stream audio it is given (each sample's value is its
    position, so the audio says where it came from)."""

    model_id = "scripted"

    def __init__(self, texts: dict[tuple[int, int], str]) -> None:
        self.texts = texts
        self.inputs: list[tuple[int, int]] = []

    def refine(self, samples: np.ndarray) -> RefinedText:
        span = (int(samples[0]), int(samples[-1]) + 1)
        self.inputs.append(span)
        return RefinedText(text=self.texts.get(span, "Other words."), pieces=1)


async def run(refiner: Scripted, *, join_short_s: float = 3.0,
              ctc: tuple[str, ...] | None = None) -> tuple[RefineStage, list[CaptionRefined]]:
    """`ctc`: each segment's CTC text, and the guard on (else off, with no first pass)."""
    audio = np.arange(160_000, dtype=np.float32)
    finals = FinalLog()
    for i, text in enumerate(ctc or ()):
        finals.put(ClosedSegment(segment=i, start=SEGMENTS[i][0], text=text, words=(),
                                 logprobs=np.zeros((0, 1), np.float32)))
    said: dict[int, list[object]] = {}
    for i, (a, b) in enumerate(SEGMENTS):
        said.setdefault(a + BLOCK, []).extend(
            [SegmentStart(i, a), SegmentAudio(i, a, audio[a:b])])
        said.setdefault(b, []).insert(0, SegmentEnd(i, b, False))
    options = RefineStageOptions(guard=GuardOptions(enabled=ctc is not None),
                                 join_short_s=join_short_s)
    async with GenerationWorker(name="cpu") as gen:
        stage = RefineStage(stream="s", refiner=refiner, generator=gen, live=False,
                            arrivals=ArrivalLog(), finals=finals, vocabulary=None,
                            frame_s=0.02, options=options)
        for start in range(0, len(audio), BLOCK):
            stage.on_block(AudioBlock(stream="s", start=start,
                                      samples=audio[start:start + BLOCK]))
            for out in said.get(start + BLOCK, []):
                if isinstance(out, SegmentStart):
                    stage.on_start(out)
                elif isinstance(out, SegmentAudio):
                    stage.on_audio(out)
                elif isinstance(out, SegmentEnd):
                    await stage.on_end(out)
            await stage.step()
        stage.on_stream_end()
        events = [e async for e in stage.background() if isinstance(e, CaptionRefined)]
    return stage, events


async def test_a_short_segment_after_no_pause_is_decoded_with_the_previous_one() -> None:
    refiner = Scripted({SEGMENTS[0]: "One, two three.", (16_000, 80_000):
                        "One, two three four five.", SEGMENTS[1]: "five."})
    stage, events = await run(refiner)
    assert [(e.segment, e.text, e.accepted) for e in events] == [
        (0, "One, two three.", True), (1, "four five.", True), (2, "Other words.", True),
        (3, "Other words.", True)]
    assert refiner.inputs == [SEGMENTS[0], (16_000, 80_000), SEGMENTS[2], SEGMENTS[3]]
    assert stage.counters()["refine_joined"] == 1
    # The event keeps the segment's own times and words.
    assert (events[1].start, events[1].end) == (4.0, 5.0)
    assert [w.word for w in events[1].words] == ["four", "five."]


async def test_a_joined_decode_that_does_not_repeat_the_previous_text_is_not_used() -> None:
    refiner = Scripted({SEGMENTS[0]: "One, two three.", (16_000, 80_000): "Something else.",
                        SEGMENTS[1]: "five."})
    stage, events = await run(refiner)
    assert events[1].text == "five."
    assert refiner.inputs[1:3] == [(16_000, 80_000), SEGMENTS[1]]
    assert stage.counters()["refine_joined"] == 0


async def test_joining_can_be_turned_off() -> None:
    refiner = Scripted({SEGMENTS[1]: "five."})
    stage, events = await run(refiner, join_short_s=0.0)
    assert refiner.inputs == SEGMENTS
    assert events[1].text == "five."
    assert stage.counters()["refine_joined"] == 0


async def test_the_guard_judges_a_joined_text_against_the_segments_own_ctc_text() -> None:
    """A joined decode that loops (prompted and joined decodes can) is rejected like any
    refinement; the segment is then decoded alone, and only if that is rejected too does the
    CTC text stand. A good joined decode is accepted."""
    ctc = ("ONE TWO THREE", "FOUR FIVE", "OTHER WORDS", "OTHER WORDS")
    loop = {SEGMENTS[0]: "One, two three.",
            (16_000, 80_000): "One, two three four five five five five five."}
    looping = Scripted(loop)
    stage, events = await run(looping, ctc=ctc)
    assert (events[1].accepted, events[1].reason, events[1].text) == \
        (False, "disagrees", "FOUR FIVE")  # alone it says "Other words.": rejected too
    assert looping.inputs[1:3] == [(16_000, 80_000), SEGMENTS[1]]
    assert stage.counters()["refine_joined"] == 0
    assert stage.counters()["refine_rejected"] == 1
    alone_is_fine = Scripted({**loop, SEGMENTS[1]: "Four five."})
    stage, events = await run(alone_is_fine, ctc=ctc)
    assert (events[1].accepted, events[1].text) == (True, "Four five.")
    assert stage.counters()["refine_rejected"] == 0
    good = Scripted({SEGMENTS[0]: "One, two three.",
                     (16_000, 80_000): "One, two three four five."})
    _, events = await run(good, ctc=ctc)
    assert [(e.accepted, e.text) for e in events[:2]] == [(True, "One, two three."),
                                                          (True, "four five.")]


def test_join_option_is_checked() -> None:
    with pytest.raises(ValueError, match="join_short_s"):
        RefineStageOptions(join_short_s=-1.0)


@pytest.mark.parametrize(("previous", "whole", "rest"), [
    # Case and punctuation of the new words kept; the previous words compared normalised.
    ("All nouns begin with a capital letter.",
     "All nouns begin with a capital letter even in the middle.", "even in the middle."),
    ("peppered flour-fatten", "thick, peppered flour fatten sauce.", "sauce."),
    ("Ask not", "ask not what your country", "what your country"),
    # The decode must repeat the previous text's end and say more, or it cannot be cut.
    ("hello there", "something else entirely", None),
    ("hello there", "Hello there.", None),
    ("one two three", "one two four five", None),
    ("", "anything", None),
])
def test_text_after(previous: str, whole: str, rest: str | None) -> None:
    assert text_after(previous, whole) == rest
