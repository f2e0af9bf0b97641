"""The two-stage VAD (engine/vad.py): webrtcvad onsets confirmed by silero-vad, silero holds.

Two kinds of test: the decision logic with a scripted silero (fast, exact), and the real
silero-vad network on generated audio (espeak-ng speech, tones, hum, fan-like noise).
What the real network does with that audio (measured while writing these tests): tones from
100 Hz to 3 kHz, mains hum and brown noise score below 0.1 (webrtcvad calls them all speech);
espeak speech scores above 0.5 within ~60 ms of its onset, and the score falls below 0.2 at
most ~0.35 s after the speech ends (longer when a tone or noise follows than into silence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from audio_gen import HAVE_ESPEAK, SR, Audio, espeak, noise, silence, tone, trim

from harken.engine.audio import AudioBlock
from harken.engine.vad import (
    SILERO_LEAD_S,
    SegmentAudio,
    SegmentEnd,
    SegmentStart,
    VadOptions,
    VadOutput,
    VadSegmenter,
)
from harken.models.silero_vad import (
    CHUNK_SAMPLES,
    load_silero_vad,
    silero_model_path,
)

needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not installed")
RELEASE_LAG_S = 0.4  # s: silero's score falls below the release threshold within this
FRAME_S = 0.03  # s: the default frame


def s(seconds: float) -> int:
    return round(seconds * SR)


class ScriptedScorer:
    """A stand-in for silero: probability 1 inside the given (start, end) seconds, else 0."""

    chunk_samples = CHUNK_SAMPLES

    def __init__(self, speech: list[tuple[float, float]]) -> None:
        self.speech = speech
        self.pos = 0

    def __call__(self, chunk: Audio) -> float:
        t = self.pos / SR
        self.pos += chunk.shape[0]
        return 1.0 if any(a <= t < b for a, b in self.speech) else 0.0


def run(x: Audio, options: VadOptions, *, scorer: ScriptedScorer | None = None,
        block: int = 1600) -> list[tuple[VadOutput, int]]:
    """Every output with the stream position at which it was emitted."""
    seg = VadSegmenter(options, scorer=scorer)
    out: list[tuple[VadOutput, int]] = []
    for pos in range(0, x.size, block):
        end = min(pos + block, x.size)
        out += [(o, end) for o in seg.feed(AudioBlock(stream="t", start=pos, samples=x[pos:end]))]
    out += [(o, x.size) for o in seg.flush()]
    return out


def spans(out: list[tuple[VadOutput, int]]) -> list[tuple[int, int]]:
    """(start, end) of each segment."""
    starts = {o.segment: o.start for o, _ in out if isinstance(o, SegmentStart)}
    return [(starts[o.segment], o.end) for o, _ in out if isinstance(o, SegmentEnd)]


def started_at(out: list[tuple[VadOutput, int]]) -> list[int]:
    """Stream position at which each SegmentStart came out (its latency)."""
    return [at for o, at in out if isinstance(o, SegmentStart)]


# ----------------------------------------------------------------- decision logic (scripted)


def test_a_tone_webrtcvad_calls_speech_opens_nothing_unless_silero_agrees() -> None:
    x = np.concatenate([silence(0.5), tone(3.0, 1000, 0.1), silence(0.5)])
    assert len(spans(run(x, VadOptions(engine="webrtc")))) == 1  # webrtcvad: a segment
    assert run(x, VadOptions(engine="both"), scorer=ScriptedScorer([])) == []


def test_both_opens_where_silero_confirms_and_closes_when_silero_stops() -> None:
    # A tone throughout (webrtcvad voiced everywhere); silero hears speech from 2 s to 4 s.
    x = tone(6.0, 1000, 0.1)
    opts = VadOptions(engine="both")
    out = run(x, opts, scorer=ScriptedScorer([(2.0, 4.0)]), block=160)
    (start, end), = spans(out)
    # Voicing counts from SILERO_LEAD_S before silero's onset, then the pre-roll.
    want_start = s(2.0 - SILERO_LEAD_S - opts.pre_roll_s)
    assert want_start <= start <= want_start + s(FRAME_S)
    # Silero's last speech chunk ends at 4.0 s (+ up to a chunk + a frame of grid), then the
    # hangover: the tone goes on to 6 s but holds nothing.
    assert s(4.0 + opts.hangover_s) <= end <= s(4.0 + opts.hangover_s) + CHUNK_SAMPLES + s(FRAME_S)
    # speech_started as soon as silero confirms: within a chunk and a frame of 2 s.
    (at,) = started_at(out)
    assert s(2.0) < at <= s(2.0) + CHUNK_SAMPLES + s(FRAME_S) + 160


def test_both_opens_on_silero_alone_when_webrtcvad_hears_nothing() -> None:
    # Digital silence is never voiced to webrtcvad; silero's own onset still opens a segment
    # once its speech covers min_speech_s (quiet speech webrtcvad misses).
    x = silence(3.0)
    opts = VadOptions(engine="both")
    out = run(x, opts, scorer=ScriptedScorer([(1.0, 2.0)]))
    (start, end), = spans(out)
    assert abs(start - s(1.0 - opts.pre_roll_s)) <= CHUNK_SAMPLES + s(FRAME_S)
    assert abs(end - s(2.0 + opts.hangover_s)) <= CHUNK_SAMPLES + s(FRAME_S)


def test_silero_engine_ignores_webrtcvad() -> None:
    x = tone(4.0, 1000, 0.1)
    opts = VadOptions(engine="silero")
    assert run(x, opts, scorer=ScriptedScorer([])) == []
    (start, _end), = spans(run(x, opts, scorer=ScriptedScorer([(1.0, 2.5)])))
    assert abs(start - s(1.0 - opts.pre_roll_s)) <= CHUNK_SAMPLES + s(FRAME_S)


def test_silero_hysteresis_keeps_speech_between_the_thresholds() -> None:
    class Scores:
        chunk_samples = CHUNK_SAMPLES

        def __init__(self) -> None:
            self.n = 0

        def __call__(self, chunk: Audio) -> float:
            self.n += 1
            t = self.n * CHUNK_SAMPLES / SR
            # speech at 1 s, then 0.3 (between release 0.2 and threshold 0.5) until 3 s
            return 0.9 if 1.0 <= t < 1.5 else 0.3 if 1.5 <= t < 3.0 else 0.0

    opts = VadOptions(engine="silero", speech_threshold=0.5, release_threshold=0.2)
    seg = VadSegmenter(opts, scorer=Scores())
    x = silence(5.0)
    outs = seg.feed(AudioBlock(stream="t", start=0, samples=x)) + seg.flush()
    ends = [o.end for o in outs if isinstance(o, SegmentEnd)]
    assert len(ends) == 1
    assert abs(ends[0] - s(3.0 + opts.hangover_s)) <= CHUNK_SAMPLES + s(FRAME_S)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"engine": "rnnoise"}, "engine"),
        ({"speech_threshold": 1.0}, "threshold"),
        ({"release_threshold": 0.0}, "threshold"),
        ({"speech_threshold": 0.3, "release_threshold": 0.4}, "threshold"),
    ],
)
def test_engine_options_are_validated(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VadOptions(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------- the real silero network


def hum(seconds: float) -> Audio:
    """50 Hz mains hum with its harmonics, about -20 dBFS."""
    return np.sum([tone(seconds, 50 * k, 0.05 / k) for k in range(1, 8)], axis=0).astype(
        np.float32)


def fan(seconds: float) -> Audio:
    """Brown (1/f^2) noise with the DC drift removed: like a fan or air conditioning."""
    walk = np.cumsum(np.random.default_rng(1).standard_normal(s(seconds)))
    walk -= np.convolve(walk, np.ones(400) / 400, mode="same")
    return (0.05 * walk / np.std(walk)).astype(np.float32)


@pytest.mark.parametrize("engine", ["silero", "both"])
@pytest.mark.parametrize(
    "signal",
    [
        pytest.param(lambda: tone(5.0, 1000, 0.1), id="tone-1kHz-20dBFS"),
        pytest.param(lambda: tone(5.0, 440, 0.3), id="tone-440Hz-10dBFS"),
        pytest.param(lambda: tone(5.0, 3000, 0.1), id="tone-3kHz"),
        pytest.param(lambda: hum(5.0), id="hum-50Hz"),
        pytest.param(lambda: fan(5.0), id="fan"),
    ],
)
def test_stationary_sound_opens_no_segment(engine: str, signal: object) -> None:
    x = np.concatenate([silence(0.5), signal()])  # type: ignore[operator]
    assert run(x, VadOptions(engine=engine)) == []  # type: ignore[arg-type]


def test_silero_scores_silence_low_and_keeps_state_per_stream() -> None:
    net = load_silero_vad()
    assert load_silero_vad() is net  # one network per process
    assert silero_model_path().is_file()
    a, b = net.stream(), net.stream()
    x = noise(1.0, 0.3, seed=3)
    chunks = [x[i : i + CHUNK_SAMPLES] for i in range(0, x.size - CHUNK_SAMPLES + 1,
                                                      CHUNK_SAMPLES)]
    first = [a(c) for c in chunks]
    quiet = [b(np.zeros(CHUNK_SAMPLES, np.float32)) for _ in range(5)]
    assert max(quiet) < 0.1
    c = net.stream()
    # a stream's state is its own: b's silence did not change what a new stream computes
    assert [c(ch) for ch in chunks] == pytest.approx(first, abs=1e-6)
    with pytest.raises(ValueError, match="512"):
        a(np.zeros(480, np.float32))


@pytest.fixture(scope="module")
def sentences(tmp_path_factory: pytest.TempPathFactory) -> list[Audio]:
    if not HAVE_ESPEAK:
        pytest.skip("espeak-ng is not installed")
    work: Path = tmp_path_factory.mktemp("espeak")
    texts = ("Please turn off the lights in the kitchen.",
             "We will meet at the station at half past seven tomorrow evening.")
    return [trim(espeak(t, work, name=f"e{i}")) for i, t in enumerate(texts)]


@needs_espeak
@pytest.mark.parametrize("engine", ["webrtc", "silero", "both"])
def test_speech_opens_a_segment_in_every_engine(sentences: list[Audio], engine: str) -> None:
    a, b = sentences
    x = np.concatenate([silence(1.0), a, silence(2.0), b, silence(1.0)])
    onsets = [s(1.0), s(1.0) + a.size + s(2.0)]
    offsets = [s(1.0) + a.size, x.size - s(1.0)]
    opts = VadOptions(engine=engine)  # type: ignore[arg-type]
    got = spans(run(x, opts))
    assert len(got) == 2
    for (start, end), on, off in zip(got, onsets, offsets, strict=True):
        assert abs(start - (on - s(opts.pre_roll_s))) <= s(0.1)
        assert off <= end <= off + s(opts.hangover_s + RELEASE_LAG_S)


@needs_espeak
def test_a_tone_after_speech_does_not_hold_the_segment(sentences: list[Audio]) -> None:
    a = sentences[0]
    x = np.concatenate([silence(0.5), a, tone(4.0, 1000, 0.1), silence(0.5)])
    off = s(0.5) + a.size
    opts = VadOptions(engine="both")
    (_, end), = spans(run(x, opts))
    assert end <= off + s(opts.hangover_s + RELEASE_LAG_S)


@needs_espeak
def test_speech_under_a_steady_tone_is_still_found(sentences: list[Audio]) -> None:
    # A -20 dBFS 1 kHz tone under everything: webrtcvad is voiced throughout, silero times it.
    a = sentences[1]
    clean = np.concatenate([silence(2.0), a, silence(2.0)])
    x = clean + tone(clean.size / SR, 1000, 0.1)
    opts = VadOptions(engine="both")
    (start, end), = spans(run(x, opts))
    on, off = s(2.0), s(2.0) + a.size
    assert on - s(opts.pre_roll_s + SILERO_LEAD_S) - s(0.1) <= start <= on
    assert off - s(0.5) <= end <= off + s(opts.hangover_s + RELEASE_LAG_S)


@needs_espeak
def test_speech_started_no_later_than_0_1_s_after_webrtcvad(sentences: list[Audio]) -> None:
    a, b = sentences
    background = noise(1.0 + a.size / SR + 1.5 + b.size / SR + 1.0, 0.001, seed=5)
    x = np.concatenate([silence(1.0), a, silence(1.5), b, silence(1.0)]) + background
    webrtc = started_at(run(x, VadOptions(engine="webrtc"), block=160))
    both = started_at(run(x, VadOptions(engine="both"), block=160))
    assert len(webrtc) == len(both) == 2
    for w, t in zip(webrtc, both, strict=True):
        assert t - w <= s(0.1)


def test_segments_carry_their_audio_with_silero_in_the_loop() -> None:
    # The contract (contiguous audio, truncation at end) holds whichever engine decides.
    x = tone(6.0, 1000, 0.1)
    out = [o for o, _ in run(x, VadOptions(engine="both"), scorer=ScriptedScorer([(2.0, 4.0)]),
                             block=777)]
    start = next(o.start for o in out if isinstance(o, SegmentStart))
    end = next(o.end for o in out if isinstance(o, SegmentEnd))
    audio = np.concatenate([o.samples for o in out if isinstance(o, SegmentAudio)])
    np.testing.assert_array_equal(audio[: end - start], x[start:end])


def test_a_missing_or_broken_silero_install_names_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from harken.models.errors import ModelError, ModelNotFoundError

    broken = tmp_path / "silero_vad.onnx"
    broken.write_bytes(b"not a network")
    with pytest.raises(ModelError, match="cannot load the silero-vad model"):
        load_silero_vad(broken)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install silero-vad onnxruntime"):
        silero_model_path()
