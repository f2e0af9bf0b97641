"""Speech segmentation: AudioBlocks in, segment events out. Pure, no asyncio, no I/O.

Two detectors, chosen by `VadOptions.engine` (docs/vad.md):

* `webrtc`: webrtcvad alone. Fast onsets and good on quiet speech, but it has no notion of
  stationary sound: a tone, mains hum or a fan is "speech" to it for as long as it lasts.
* `silero`: silero-vad alone (a small LSTM network, 512-sample chunks, models/silero_vad.py).
  Rejects stationary sound; a chunk later than webrtcvad on onsets.
* `both` (default): webrtcvad proposes the onset, silero must call the same moment speech
  before the segment opens, and silero alone holds it open. So a tone never opens or holds
  a segment, and the onset is where webrtcvad put it. Silero confirms within about a chunk
  of webrtcvad on real speech, so speech_started comes at most ~0.1 s after webrtcvad's own.

Silero runs on every chunk of the stream (not only after webrtcvad fires) so its recurrent
state is that of a continuous stream, as it was trained. Silero's probability is turned into
a speech state with hysteresis: speech from `speech_threshold` up, until it drops below
`release_threshold`.

Output contract (all positions are samples on the stream clock at SAMPLE_RATE):

* `SegmentStart(segment, start)` opens segment `segment` (ids count up from 0). It is only
  emitted once speech frames cover `min_speech_s`, so clicks never open a segment; `start`
  lies `pre_roll_s` before the speech onset (clamped to the stream start and to the previous
  segment's end), so onsets are not clipped.
* `SegmentAudio(segment, start, samples)` carries the segment's audio. For one segment the
  pieces are contiguous: the first starts at the segment's `start`, each next one starts where
  the previous ended.
* `SegmentEnd(segment, end, split)` closes it. A normal end is `hangover_s` after the last
  speech frame (the hangover audio is included). At end of stream (`flush()`) the open
  segment ends at the last sample fed.
* When a segment reaches `max_segment_s` it is split at the quietest frame (lowest RMS) in the
  last `split_search_s`: `SegmentEnd(end=split_point, split=True)`, then
  `SegmentStart(next id, start=split_point)` and a `SegmentAudio` that re-sends the audio
  from the split point. The old segment may already have received audio past `end`: a
  consumer must truncate a segment to its `end`. The split frame itself starts the new
  segment.

Memory is bounded: only the pre-roll ring and the split-search window are kept.
Blocks must not overlap; a gap between blocks (a source that dropped audio) is filled with
silence so that positions stay true.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import numpy as np
import webrtcvad

from harken.engine.audio import AudioBlock, Float32Array
from harken.models.audio import SAMPLE_RATE
from harken.models.silero_vad import load_silero_vad

VadEngine = Literal["webrtc", "silero", "both"]
VAD_ENGINES: tuple[str, ...] = get_args(VadEngine)
VALID_FRAME_MS = (10, 20, 30)  # ms: the frame lengths webrtcvad accepts
_INT16_SCALE = 32767.0  # float [-1, 1] -> int16 PCM for webrtcvad
_ONSET_TOLERANCE = 0.25  # extra window frames, as a fraction of the min-speech frames
# s: how far before silero's onset webrtcvad's may lie and still count (silero reacts about
# a chunk later than webrtcvad on clean speech)
SILERO_LEAD_S = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class VadOptions:
    engine: VadEngine = "both"  # webrtc | silero | both (webrtcvad onset, silero confirms)
    frame_ms: int = 30  # ms, 10/20/30
    aggressiveness: int = 2  # 0 (lenient) .. 3 (strict), webrtcvad
    # Pre-roll and hangover were 0.3 and 0.5 s for webrtcvad alone; tuned on real speech
    # for `both`, where silero's release already lags the speech end by 0.1-0.3 s (docs/vad.md).
    pre_roll_s: float = 0.2  # s of audio kept before the detected onset
    hangover_s: float = 0.3  # s of non-speech (included) before a segment ends
    min_speech_s: float = 0.25  # s of speech frames needed to open a segment
    max_segment_s: float = 15.0  # s: longer segments are split
    split_search_s: float = 2.0  # s before max_segment_s searched for the quietest frame
    speech_threshold: float = 0.5  # silero probability from which a chunk is speech
    # Below silero's own 0.35: quiet speech tails (meetings) stay in; stationary sound scores
    # under 0.1 (docs/vad.md).
    release_threshold: float = 0.2  # silero probability below which speech stops

    def __post_init__(self) -> None:
        if self.engine not in VAD_ENGINES:
            raise ValueError(f"VAD engine must be webrtc, silero or both, got {self.engine!r}")
        if self.frame_ms not in VALID_FRAME_MS:
            raise ValueError(f"VAD frame_ms must be 10, 20 or 30 (webrtcvad), got {self.frame_ms}")
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness}")
        for name in ("pre_roll_s", "hangover_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 10.0):
                raise ValueError(f"VAD {name} must be between 0 and 10 seconds, got {value}")
        if not (math.isfinite(self.min_speech_s) and 0.0 < self.min_speech_s <= 5.0):
            raise ValueError(
                f"VAD min_speech_s must be above 0 and at most 5 seconds, got {self.min_speech_s}"
            )
        if not (math.isfinite(self.split_search_s) and self.split_search_s > 0.0):
            raise ValueError(f"VAD split_search_s must be positive, got {self.split_search_s}")
        if not (math.isfinite(self.max_segment_s) and self.max_segment_s > self.split_search_s):
            raise ValueError(
                f"VAD max_segment_s ({self.max_segment_s}) must be finite and longer than "
                f"split_search_s ({self.split_search_s})"
            )
        if not (0.0 < self.release_threshold <= self.speech_threshold < 1.0):
            raise ValueError(
                "VAD thresholds must satisfy 0 < release_threshold <= speech_threshold < 1, "
                f"got release {self.release_threshold}, speech {self.speech_threshold}"
            )


class SpeechScorer(Protocol):
    """Speech probability of consecutive `chunk_samples` chunks of one stream (stateful).

    models/silero_vad.SileroStream is the real one; tests may pass a fake.
    """

    @property
    def chunk_samples(self) -> int: ...

    def __call__(self, chunk: Float32Array) -> float: ...


@dataclass(frozen=True, slots=True)
class SegmentStart:
    segment: int
    start: int  # stream-clock sample


@dataclass(frozen=True, slots=True)
class SegmentAudio:
    segment: int
    start: int  # stream-clock sample of samples[0]
    samples: Float32Array

    @property
    def end(self) -> int:
        return self.start + int(self.samples.shape[0])


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    segment: int
    end: int  # stream-clock sample one past the segment's last sample
    split: bool  # True when cut at max_segment_s; the next segment continues the speech


VadOutput = SegmentStart | SegmentAudio | SegmentEnd


@dataclass(frozen=True, slots=True)
class _Frame:
    start: int
    samples: Float32Array
    voiced: bool  # webrtcvad's decision (False when it does not run)
    speech: bool  # silero's speech state at the frame's end (False when it does not run)
    rms: float

    @property
    def end(self) -> int:
        return self.start + int(self.samples.shape[0])


def default_scorer() -> SpeechScorer:
    """A fresh silero-vad stream on the process-wide network (loaded on first use)."""
    return load_silero_vad().stream()


def preload_vad(options: VadOptions) -> None:
    """Loads the process-wide network a segmenter with these options needs (~0.1 s): an
    engine does it off the event loop before its first stream, whose audio it would stall."""
    if options.engine in ("silero", "both"):
        load_silero_vad()


class VadSegmenter:
    """Feeds AudioBlocks of any size through the VAD and emits segment outputs.

    `scorer` is the silero stage (engines `silero` and `both`); None loads silero-vad.
    """

    def __init__(self, options: VadOptions | None = None, *,
                 scorer: SpeechScorer | None = None) -> None:
        self.options = opts = options if options is not None else VadOptions()
        self._use_webrtc = opts.engine in ("webrtc", "both")
        self._use_silero = opts.engine in ("silero", "both")
        self._vad = webrtcvad.Vad(opts.aggressiveness) if self._use_webrtc else None
        self._scorer: SpeechScorer | None = None
        if self._use_silero:
            self._scorer = scorer if scorer is not None else default_scorer()
        self._chunk = self._scorer.chunk_samples if self._scorer is not None else 0
        self._chunk_buf = np.zeros(self._chunk, dtype=np.float32)
        self._chunk_fill = 0
        self._chunk_pos = 0  # stream position of the chunk being filled
        self._speech = False  # silero's state after the last chunk it scored
        self._speech_since = 0  # where silero's current speech run began
        self._frame = SAMPLE_RATE * opts.frame_ms // 1000  # samples per frame
        frame_s = opts.frame_ms / 1000
        self._min_frames = max(1, math.ceil(opts.min_speech_s / frame_s - 1e-9))
        self._window = self._min_frames + max(1, math.ceil(self._min_frames * _ONSET_TOLERANCE))
        self._pre_roll = round(opts.pre_roll_s * SAMPLE_RATE)
        self._hangover = round(opts.hangover_s * SAMPLE_RATE)
        self._max_segment = round(opts.max_segment_s * SAMPLE_RATE)
        self._split_search = round(opts.split_search_s * SAMPLE_RATE)
        pre_roll_frames = math.ceil(self._pre_roll / self._frame)
        split_frames = math.ceil(self._split_search / self._frame)
        # Bounded history: enough for pre-roll before the onset window, or the split search.
        self._history: collections.deque[_Frame] = collections.deque(
            maxlen=max(pre_roll_frames + self._window + 2, split_frames + 2)
        )
        # Recent webrtcvad / silero decisions of the frames since the last segment.
        self._voiced_window: collections.deque[bool] = collections.deque(maxlen=self._window)
        self._speech_window: collections.deque[bool] = collections.deque(maxlen=self._window)
        self._lead = round(SILERO_LEAD_S * SAMPLE_RATE)
        self._remainder = np.zeros(0, dtype=np.float32)
        self._next: int | None = None  # stream position of the next sample expected
        self._stream_start = 0
        self._prev_end = 0  # end of the last closed segment
        self._segment = -1  # id of the current (or last) segment
        self._in_speech = False
        self._seg_start = 0
        self._last_voiced_end = 0
        self._pending: list[Float32Array] = []  # audio of the open segment not yet emitted
        self._pending_start = 0
        self._out: list[VadOutput] = []

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def feed(self, block: AudioBlock) -> list[VadOutput]:
        """Process one block; returns the outputs it completes, in order."""
        if self._next is None:
            self._next = self._stream_start = self._prev_end = block.start
        if block.start < self._next:
            raise ValueError(
                f"VAD got overlapping audio: block starts at sample {block.start} but "
                f"{self._next} was already fed; sources must advance the clock monotonically"
            )
        samples = np.asarray(block.samples, dtype=np.float32)
        if block.start > self._next:
            # The source lost audio; silence keeps frame positions on the stream clock.
            gap = np.zeros(block.start - self._next, dtype=np.float32)
            samples = np.concatenate([gap, samples])
        self._next = block.end
        data = np.concatenate([self._remainder, samples]) if self._remainder.size else samples
        pos = self._next - int(data.shape[0])
        n_frames = data.shape[0] // self._frame
        for i in range(n_frames):
            chunk = data[i * self._frame : (i + 1) * self._frame]
            self._process_frame(pos + i * self._frame, chunk)
        self._remainder = data[n_frames * self._frame :].copy()
        return self._take_outputs()

    def flush(self) -> list[VadOutput]:
        """End of stream: close an open segment at the last sample fed."""
        if self._in_speech and self._next is not None:
            if self._remainder.size:
                self._append_audio(self._next - int(self._remainder.shape[0]), self._remainder)
            self._end_segment(self._next, split=False)
        self._remainder = np.zeros(0, dtype=np.float32)
        self._clear_windows()
        return self._take_outputs()

    # ------------------------------------------------------------------------ internals

    def _take_outputs(self) -> list[VadOutput]:
        self._emit_pending()
        out, self._out = self._out, []
        return out

    def _score(self, scorer: SpeechScorer, start: int, samples: Float32Array) -> None:
        """Run silero on every chunk `samples` completes (chunks lie on their own grid)."""
        opts = self.options
        i = 0
        while i < samples.shape[0]:
            if self._chunk_fill == 0:
                self._chunk_pos = start + i
            take = min(self._chunk - self._chunk_fill, samples.shape[0] - i)
            self._chunk_buf[self._chunk_fill : self._chunk_fill + take] = samples[i : i + take]
            self._chunk_fill += take
            i += take
            if self._chunk_fill == self._chunk:
                self._chunk_fill = 0
                p = scorer(self._chunk_buf)
                if p >= opts.speech_threshold and not self._speech:
                    self._speech, self._speech_since = True, self._chunk_pos
                elif p < opts.release_threshold:
                    self._speech = False

    def _process_frame(self, start: int, samples: Float32Array) -> None:
        voiced = False
        if self._vad is not None:
            pcm = np.clip(samples * _INT16_SCALE, -_INT16_SCALE, _INT16_SCALE).astype(np.int16)
            voiced = bool(self._vad.is_speech(pcm.tobytes(), SAMPLE_RATE))
        if self._scorer is not None:
            self._score(self._scorer, start, samples)
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        frame = _Frame(start, samples.copy(), voiced, self._speech, rms)
        self._history.append(frame)
        if self._in_speech:
            self._speech_frame(frame)
        else:
            self._silence_frame(frame)

    def _clear_windows(self) -> None:
        self._voiced_window.clear()
        self._speech_window.clear()

    def _first(self, window: collections.deque[bool], not_before: int = 0) -> int | None:
        """Start of the first flagged frame of `window` (the newest frames) from `not_before`."""
        recent = list(self._history)[-len(window):]
        return next((f.start for f, v in zip(recent, window, strict=True)
                     if v and f.start >= not_before), None)

    def _onset(self, frame: _Frame) -> int | None:
        """Where the speech began if a segment opens on `frame`, else None."""
        voiced = sum(self._voiced_window) >= self._min_frames
        speech = sum(self._speech_window) >= self._min_frames
        engine = self.options.engine
        if engine == "webrtc":
            return self._first(self._voiced_window) if voiced else None
        if engine == "silero":
            return self._first(self._speech_window) if speech else None
        onsets: list[int] = []
        if voiced and frame.speech:
            # webrtcvad's onset, confirmed by silero. Under a steady tone every frame is
            # voiced, so only voicing from just before silero's own onset counts.
            found = self._first(self._voiced_window, self._speech_since - self._lead)
            onsets.append(found if found is not None else self._speech_since)
        if speech:  # quiet speech webrtcvad missed
            found = self._first(self._speech_window)
            if found is not None:
                onsets.append(found)
        return min(onsets) if onsets else None

    def _silence_frame(self, frame: _Frame) -> None:
        self._voiced_window.append(frame.voiced)
        self._speech_window.append(frame.speech)
        onset = self._onset(frame)
        if onset is None:
            return
        start = max(onset - self._pre_roll, self._stream_start, self._prev_end)
        start = max(start, self._history[0].start)  # never before what is buffered
        self._segment += 1
        self._in_speech = True
        self._seg_start = start
        self._last_voiced_end = frame.end
        self._clear_windows()
        self._out.append(SegmentStart(self._segment, start))
        for f in self._history:
            if f.end > start:
                self._append_audio(f.start, f.samples, from_pos=start)

    def _speech_frame(self, frame: _Frame) -> None:
        if frame.speech if self._use_silero else frame.voiced:
            self._last_voiced_end = frame.end
        else:
            end = self._last_voiced_end + self._hangover
            if frame.end >= end:
                self._append_audio(frame.start, frame.samples[: end - frame.start])
                self._end_segment(end, split=False)
                return
        self._append_audio(frame.start, frame.samples)
        if frame.end - self._seg_start >= self._max_segment:
            self._split(frame.end)

    def _split(self, now: int) -> None:
        lo = now - self._split_search
        candidates = [f for f in self._history if f.start >= lo and f.start > self._seg_start]
        if not candidates:
            return  # cannot happen with max_segment_s > split_search_s; keep going if it does
        quietest = min(candidates, key=lambda f: f.rms)
        split_at = quietest.start
        self._end_segment(split_at, split=True)
        self._segment += 1
        self._in_speech = True
        self._seg_start = split_at
        # Speech may have paused before the split point; the hangover then runs from it.
        self._last_voiced_end = max(self._last_voiced_end, split_at)
        self._out.append(SegmentStart(self._segment, split_at))
        for f in self._history:
            if f.start >= split_at:
                self._append_audio(f.start, f.samples)

    def _append_audio(self, start: int, samples: Float32Array, from_pos: int | None = None) -> None:
        if from_pos is not None and from_pos > start:
            samples = samples[from_pos - start :]
            start = from_pos
        if not samples.size:
            return
        if not self._pending:
            self._pending_start = start
        self._pending.append(samples)

    def _emit_pending(self) -> None:
        if self._pending:
            audio = np.concatenate(self._pending).astype(np.float32, copy=False)
            self._out.append(SegmentAudio(self._segment, self._pending_start, audio))
            self._pending = []

    def _end_segment(self, end: int, *, split: bool) -> None:
        self._emit_pending()
        self._out.append(SegmentEnd(self._segment, end, split))
        self._in_speech = False
        self._prev_end = end
        self._clear_windows()


def clip_segments(samples: Float32Array, options: VadOptions | None = None, *,
                  block_samples: int = SAMPLE_RATE // 10,
                  scorer: SpeechScorer | None = None) -> list[tuple[int, Float32Array]]:
    """The speech segments of a whole clip as (start sample, audio), each cut at its end.

    For offline uses (benchmarks, enrollment, evaluation): the same segmenter as a live
    stream, fed in blocks. Audio a split re-sends is kept once, in the later segment.
    """
    segmenter = VadSegmenter(options, scorer=scorer)
    outputs: list[VadOutput] = []
    for start in range(0, len(samples), block_samples):
        outputs += segmenter.feed(AudioBlock(stream="clip", start=start,
                                             samples=samples[start:start + block_samples]))
    outputs += segmenter.flush()
    pieces: dict[int, list[SegmentAudio]] = {}
    starts: dict[int, int] = {}
    result: list[tuple[int, Float32Array]] = []
    for out in outputs:
        if isinstance(out, SegmentStart):
            pieces[out.segment], starts[out.segment] = [], out.start
        elif isinstance(out, SegmentAudio):
            pieces[out.segment].append(out)
        else:
            start = starts.pop(out.segment)
            audio = np.concatenate([p.samples for p in pieces.pop(out.segment)] or
                                   [np.zeros(0, np.float32)])
            result.append((start, audio[: out.end - start]))
    return result
