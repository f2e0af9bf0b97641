"""Moving one satellite's frames from the wildcard subscription to the site's own.

    handover = Handover(now=t)            # when its own subscription is asked for
    handover.subscribed(now)              # the broker acknowledged it
    for payload in handover.from_wild(payload, now): ...   # a frame on the wildcard connection
    for payload in handover.from_own(payload, now): ...    # a frame on the site's own one
    for payload in handover.expire(now): ...                # now and then

Without an allowlist Harken reads the satellites' audio through one wildcard subscription,
which a flood under made-up site names fills (the broker then drops the real satellites'
frames with the rest). A site once admitted is therefore also subscribed by its exact topic
on a second connection (engine/mqtt/satellites.py). For a while both connections deliver its
frames, each in publish order, each possibly with gaps where the broker dropped some, and
neither in step with the other. The rule:

    The hand-over point is the first frame both connections delivered. Frames before it are
    taken from the wildcard connection, frames from it on from the site's own subscription.

- A frame on the wildcard connection is taken at once (it is the older path) and remembered.
- A frame on the own connection is held back (bounded) until the hand-over point is found:
  a wildcard frame equal to a held one (the wildcard caught up: the held frames are taken, in
  order) or an own frame equal to a remembered wildcard frame (the wildcard was ahead: the
  own frames it already delivered are skipped as they come).
- From then on (`Phase.OWN`) the wildcard's frames of the site are duplicates, dropped unread.
- If no common frame shows within `max_wait_s` (the wildcard connection is flooded and its
  broker queue drops the site's frames, or the site went quiet), the held frames are taken
  and the own subscription wins (`timed_out`); wildcard frames the broker still had queued
  from before it are then lost, which is what the flood was doing to them anyway.

Frames have no sequence numbers, so a frame is known by its bytes. A satellite that sends
identical frames (digital silence) can make the rule pick an earlier copy as the common one:
at most a few identical frames are then repeated or skipped, never other audio.

Pure logic (no asyncio, no MQTT): the source calls it with its own clock.
"""

from __future__ import annotations

import collections
import enum
import math

HANDOVER_MAX_WAIT_S = 1.0  # s the own frames may be held back looking for the common frame
HANDOVER_MAX_FRAMES = 64  # own frames held back at most (4 s of 1024 samples at 16 kHz)
HANDOVER_MAX_BYTES = 2 * 1024 * 1024  # their payloads
HANDOVER_WINDOW_FRAMES = 64  # wildcard frames remembered to spot the common frame


class Phase(enum.Enum):
    WAIT = "wait"  # own subscription asked for, nothing on it yet
    HANDOVER = "handover"  # both connections may deliver: looking for the common frame
    OWN = "own"  # the own subscription delivers; the wildcard's copies are duplicates


def _key(payload: bytes) -> tuple[int, int]:
    # Bytes cache their hash; with the length, a collision between two frames is negligible.
    return hash(payload), len(payload)


class Handover:
    """One site's hand-over from the wildcard to its own subscription (module docstring)."""

    def __init__(self, *, now: float, max_wait_s: float = HANDOVER_MAX_WAIT_S,
                 max_frames: int = HANDOVER_MAX_FRAMES, max_bytes: int = HANDOVER_MAX_BYTES,
                 window: int = HANDOVER_WINDOW_FRAMES) -> None:
        if not (math.isfinite(max_wait_s) and max_wait_s > 0) or max_frames < 1 or \
                max_bytes < 1 or window < 1:
            raise ValueError("max_wait_s > 0, max_frames >= 1, max_bytes >= 1 and window >= 1 "
                             "are required")
        self.phase = Phase.WAIT
        self.requested = now
        self._max_wait_s = max_wait_s
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._deadline = math.inf
        # Wildcard frames taken since the own subscription was asked for, oldest first.
        self._wild: collections.deque[tuple[int, int]] = collections.deque(maxlen=window)
        self._held: collections.deque[bytes] = collections.deque()  # own frames, held back
        self._held_keys: set[tuple[int, int]] = set()
        self._held_bytes = 0
        # After an own frame matched a wildcard one: the wildcard frames after it, which the
        # own connection will deliver next and which were taken already.
        self._expect: collections.deque[tuple[int, int]] = collections.deque()
        # Counters.
        self.duplicates = 0  # frames dropped because the other connection delivered them
        self.timed_out = False  # handed over without a common frame

    def subscribed(self, now: float) -> None:
        """The broker acknowledged the own subscription: the wait for a common frame starts."""
        if self.phase is Phase.WAIT:
            self._start(now)

    def from_wild(self, payload: bytes, now: float) -> list[bytes]:
        """The frames to take, in order, for one frame from the wildcard connection."""
        if self.phase is Phase.OWN:
            self.duplicates += 1
            return []
        key = _key(payload)
        if self.phase is Phase.HANDOVER and key in self._held_keys:
            # The wildcard caught up with a held frame: the hand-over point. The held frames
            # before it are ones the broker dropped on the wildcard connection.
            self.duplicates += 1
            return self._switch()
        self._wild.append(key)
        return [payload, *self.expire(now)]

    def from_own(self, payload: bytes, now: float) -> list[bytes]:
        """The frames to take, in order, for one frame from the site's own subscription."""
        if self.phase is Phase.OWN and not self._expect:
            return [payload]  # the steady state: nothing to compare
        key = _key(payload)
        if self.phase is Phase.OWN:
            if key in self._expect:
                # Taken from the wildcard already (those before it, the own connection lost).
                while self._expect.popleft() != key:
                    pass
                self.duplicates += 1
                return []
            self._expect.clear()  # past what the wildcard delivered: nothing more to skip
            return [payload]
        if self.phase is Phase.WAIT:
            self._start(now)  # its acknowledgement may be handled after its first frame
        wild = list(self._wild)
        if key in wild:
            # The wildcard delivered this frame already: the hand-over point. The latest
            # copy counts (identical frames, such as silence, skip the fewest).
            at = len(wild) - 1 - wild[::-1].index(key)
            self.duplicates += 1
            out = self._switch()
            self._expect.extend(wild[at + 1:])
            return out
        self._held.append(payload)
        self._held_keys.add(key)
        self._held_bytes += len(payload)
        if len(self._held) > self._max_frames or self._held_bytes > self._max_bytes or \
                now >= self._deadline:
            self.timed_out = True
            return self._switch()
        return []

    def expire(self, now: float) -> list[bytes]:
        """The held frames, if the wait for a common frame is over."""
        if self.phase is Phase.HANDOVER and now >= self._deadline:
            self.timed_out = True
            return self._switch()
        return []

    @property
    def held(self) -> int:
        return len(self._held)

    def _start(self, now: float) -> None:
        self.phase = Phase.HANDOVER
        self._deadline = now + self._max_wait_s

    def _switch(self) -> list[bytes]:
        out = list(self._held)
        self.phase = Phase.OWN
        self._held.clear()
        self._held_keys.clear()
        self._held_bytes = 0
        self._wild.clear()
        return out
