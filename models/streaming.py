"""Incremental streaming of one speech segment through a whole-window CTC encoder.

HuBERT-style encoders attend over the whole window, so a frame's log-probs depend on the audio
around it. Each hop re-encodes only L seconds of left context + the frames that are not final
yet + the new audio; a frame becomes FINAL once it has been encoded with at least R seconds of
right context, and is never encoded again. The cost per hop is bounded by L + R + hop, so the
cost of a segment grows linearly with its length.

This module is pure bookkeeping (numpy only): the caller encodes the windows it hands out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harken.models.audio import SAMPLE_RATE
from harken.models.geometry import FrameGeometry, normalization_std, normalize_window

HOP_S = 0.5  # seconds between successive windows (caption update rate)
LEFT_CONTEXT_S = 2.0  # seconds of already-final audio re-encoded as left context
RIGHT_CONTEXT_S = 0.5  # seconds of audio after a frame before it becomes final


@dataclass(frozen=True)
class StreamingOptions:
    hop_s: float = HOP_S
    left_context_s: float = LEFT_CONTEXT_S
    right_context_s: float = RIGHT_CONTEXT_S

    def __post_init__(self) -> None:
        if not self.hop_s > 0:
            raise ValueError(f"hop_s must be > 0 seconds, got {self.hop_s}")
        if round(self.hop_s * SAMPLE_RATE) < 1:
            raise ValueError(f"hop_s {self.hop_s} is shorter than one sample; use e.g. 0.5")
        if not self.left_context_s >= 0:
            raise ValueError(f"left_context_s must be >= 0 seconds, got {self.left_context_s}")
        if not self.right_context_s >= 0:
            raise ValueError(f"right_context_s must be >= 0 seconds, got {self.right_context_s}")

    @property
    def hop_samples(self) -> int:
        return round(self.hop_s * SAMPLE_RATE)

    @property
    def left_samples(self) -> int:
        return round(self.left_context_s * SAMPLE_RATE)

    @property
    def right_samples(self) -> int:
        return round(self.right_context_s * SAMPLE_RATE)


@dataclass(frozen=True, eq=False)  # holds an array: compare fields, not windows
class Window:
    """Audio to encode. start is a multiple of the frame size, so window frame k is segment
    frame start // frame_samples + k."""

    step: int  # hop-grid index (end == step * hop_samples), or -1 for the final window
    start: int  # sample offsets inside the segment
    end: int
    samples: np.ndarray  # float32, normalised with the segment's statistics up to `end`
    final: bool  # accepting it makes every frame final


class _Growing:
    """A float32 array (1-D, or rows of `width`) with amortised O(1) appends."""

    def __init__(self, width: int | None = None) -> None:
        shape = (16_000,) if width is None else (64, width)
        self._data = np.zeros(shape, dtype=np.float32)
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        needed = self.size + rows.shape[0]
        if needed > self._data.shape[0]:
            capacity = max(needed, 2 * self._data.shape[0])
            grown = np.zeros((capacity, *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : needed] = rows
        self.size = needed

    def truncate(self, size: int) -> None:
        self.size = min(self.size, size)

    def view(self, start: int = 0, end: int | None = None) -> np.ndarray:
        stop = self.size if end is None else min(end, self.size)
        return self._data[start:stop]

    def storage(self, start: int, end: int) -> np.ndarray:
        """Rows up to the capacity, including ones dropped by truncate (not yet overwritten)."""
        return self._data[start:end]


class StreamingCtc:
    """Per-segment streaming state: pushed audio, final frames, the tentative tail."""

    def __init__(
        self, *, geometry: FrameGeometry, options: StreamingOptions, normalize: bool
    ) -> None:
        self.geometry = geometry
        self.options = options
        self.normalize = normalize
        # The whole segment's audio is kept: the VAD bounds a segment's length, and keeping it
        # lets truncate() and the running statistics stay exact. (Audio before the left context
        # of the first non-final frame is never read again.)
        self._audio = _Growing()
        self._final: _Growing | None = None  # created on the first accept (vocab width)
        self._tentative = np.zeros((0, 0), dtype=np.float32)
        # Running sums over audio[0:_stats_end] for O(hop) normalisation statistics per window.
        self._stats_end = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._next_step = 1
        self._last_end = -1  # end of the last accepted window (-1: none, or invalidated)
        self.merged_steps = 0
        # Pushes since the last window that completed a grid point not taken yet: the steps
        # a caller that stepped after every push would have taken (for merged_steps).
        self._due_pushes = 0
        self.encoded_samples = 0
        self.n_windows = 0

    # ---------------------------------------------------------------- properties
    @property
    def pushed_samples(self) -> int:
        return self._audio.size

    @property
    def n_final_frames(self) -> int:
        return 0 if self._final is None else self._final.size

    @property
    def n_frames(self) -> int:
        return self.n_final_frames + self._tentative.shape[0]

    @property
    def done(self) -> bool:
        """Every frame the pushed audio yields is final."""
        return self.n_final_frames == self.geometry.num_frames(self.pushed_samples)

    # ---------------------------------------------------------------- audio in
    def push(self, samples: np.ndarray) -> None:
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1)
        hop = self.options.hop_samples
        before, after = self._audio.size // hop, (self._audio.size + chunk.size) // hop
        if after > before and after >= self._next_step:
            self._due_pushes += 1
        self._audio.extend(chunk)

    def truncate(self, n_samples: int) -> None:
        """The segment ends at `n_samples` (a VAD split): drop later audio and the frames that
        would need it. Final frames inside the kept audio stay final."""
        if n_samples < 0 or n_samples > self.pushed_samples:
            raise ValueError(
                f"cannot truncate to {n_samples} samples: {self.pushed_samples} were pushed"
            )
        self._audio.truncate(n_samples)
        # Grid points past the cut are gone, and with them the pushes that completed them.
        newest = n_samples // self.options.hop_samples
        self._due_pushes = min(self._due_pushes, max(0, newest - self._next_step + 1))
        keep = self.geometry.num_frames(n_samples)
        if self._final is not None:
            self._final.truncate(keep)
        self._tentative = self._tentative[: max(0, keep - self.n_final_frames)]
        if self._last_end > n_samples:
            # The tentative frames saw audio that no longer belongs to the segment.
            self._last_end = -1
        if self._stats_end > n_samples:
            self._move_stats(n_samples)

    # ---------------------------------------------------------------- windows out
    def next_window(self, *, latest: bool = False) -> Window | None:
        """The next window ending on the hop grid, or None until a full new hop is pushed.

        latest=False takes the next grid point (deterministic: results never depend on timing);
        latest=True jumps to the newest complete grid point: the window still starts at the
        first frame that is not final, so the steps in between are merged into it: no audio
        goes unencoded, only their partial updates are not made. `merged_steps` counts the
        merged steps that were due apart, i.e. complete before the newest push: a caller that
        kept up would have taken them one by one. Grid points that one push completed
        together never were: a segment opened by a VAD split arrives with up to
        split_search_s of audio, whose partials the segment before it already showed. So a
        window merges one step fewer than the pushes that completed its grid points.
        """
        hop = self.options.hop_samples
        newest = self.pushed_samples // hop
        if newest < self._next_step:
            return None
        step = newest if latest else self._next_step
        self.merged_steps += min(step - self._next_step, max(0, self._due_pushes - 1))
        self._due_pushes = 0
        self._next_step = step + 1
        return self._window(step=step, end=step * hop, final=False)

    def final_window(self) -> Window | None:
        """The window ending at the end of the pushed audio; accepting it finalises every frame.

        None when there is nothing new to encode. If the last accepted window already ended at
        the end of the audio, its tentative frames saw all the audio there is: they become
        final here without another forward pass.
        """
        if self.done:
            return None
        end = self.pushed_samples
        if self._last_end == end:
            self._finalize(self._tentative)
            self._tentative = self._tentative[:0]
            return None
        self._next_step = end // self.options.hop_samples + 1
        return self._window(step=-1, end=end, final=True)

    def _window(self, *, step: int, end: int, final: bool) -> Window:
        first_open = self.n_final_frames * self.geometry.frame_samples
        start = max(0, first_open - self.options.left_samples)
        start -= start % self.geometry.align_samples
        samples = self._audio.view(start, end)
        if self.normalize:
            self._move_stats(end)
            mean = self._sum / end if end else 0.0
            var = max(0.0, self._sum_sq / end - mean * mean) if end else 0.0
            samples = normalize_window(samples, mean=mean, std=normalization_std(var))
        else:
            samples = samples.copy()
        return Window(step=step, start=start, end=end, samples=samples, final=final)

    def _move_stats(self, end: int) -> None:
        """Advance (or rewind, after truncate) the running sums to cover audio[0:end]."""
        if end >= self._stats_end:
            part = self._audio.view(self._stats_end, end).astype(np.float64)
            self._sum += float(part.sum())
            self._sum_sq += float(np.dot(part, part))
        else:
            part = self._audio_history(end, self._stats_end)
            self._sum -= float(part.sum())
            self._sum_sq -= float(np.dot(part, part))
        self._stats_end = end

    def _audio_history(self, start: int, end: int) -> np.ndarray:
        # After truncate the dropped samples are still in the buffer's storage (size shrank,
        # data did not), which is exactly what rewinding the sums needs.
        return self._audio.storage(start, end).astype(np.float64)

    # ---------------------------------------------------------------- results in
    def accept(self, window: Window, logprobs: np.ndarray) -> None:
        """Take the encoder's log-probs for `window`: newly final frames are appended once, in
        order; the remaining frames replace the tentative tail."""
        frame = self.geometry.frame_samples
        expected = self.geometry.num_frames(window.end - window.start)
        if logprobs.ndim != 2 or logprobs.shape[0] != expected:
            raise ValueError(
                f"window [{window.start}:{window.end}] must have {expected} frames of log-probs, "
                f"got shape {logprobs.shape}"
            )
        if window.start % frame:
            raise ValueError(f"window start {window.start} is not on a {frame}-sample frame")
        if window.end > self.pushed_samples:
            raise ValueError(
                f"window ends at {window.end} but the segment has {self.pushed_samples} samples "
                "(it was truncated after the window was made); drop the window"
            )
        self.encoded_samples += window.end - window.start
        self.n_windows += 1
        first = window.start // frame  # segment frame of the window's frame 0
        offset = self.n_final_frames - first
        if offset < 0:
            raise ValueError("window starts after the first non-final frame; make a new window")
        fresh = np.asarray(logprobs[offset:], dtype=np.float32)
        if window.final:
            n_newly_final = fresh.shape[0]
        else:
            # Frame j is final when it has R of right context (its audio end + R fits in the
            # window). Inside a segment (window.start > 0) the window starts L before the first
            # open frame, so the left context is there by construction. At the segment start
            # there is less, so frames wait for a window of L + hop + R and get the extra right
            # context instead, as chunked inference does.
            limit = window.end - self.options.right_samples - self.geometry.receptive_samples
            opts = self.options
            enough = window.start > 0 or window.end - window.start >= (
                opts.left_samples + opts.right_samples + opts.hop_samples)
            n_final_total = 0 if limit < 0 or not enough else limit // frame + 1
            n_newly_final = max(0, min(fresh.shape[0], n_final_total - self.n_final_frames))
        self._finalize(fresh[:n_newly_final])
        self._tentative = fresh[n_newly_final:].copy()
        self._last_end = window.end

    def _finalize(self, rows: np.ndarray) -> None:
        if self._final is None:
            self._final = _Growing(rows.shape[1])
        if rows.shape[0]:
            self._final.extend(rows)

    def logprobs(self) -> np.ndarray:
        """Final frames then tentative frames: [frames, vocab]."""
        if self._final is None:
            return self._tentative.copy()
        if self._tentative.shape[0] == 0:
            return self._final.view().copy()
        return np.concatenate([self._final.view(), self._tentative])

    def final_logprobs(self) -> np.ndarray:
        """Only the frames that will not change any more."""
        if self._final is None:
            return np.zeros((0, self._tentative.shape[1]), dtype=np.float32)
        return self._final.view().copy()
