"""Defences for what arrives from the network: counted, rate-limited-logged rejections and
token-bucket rate limits.

Anyone on a shared broker may publish anything, at any rate. Every parser of network input
turns *any* failure into one rejection: the message is dropped, `Rejections` counts it by
reason and logs at most `LOG_BURST` lines per `LOG_INTERVAL_S` (then one line saying how
many it left out), so a flood can neither end the run nor fill the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

LOG_INTERVAL_S = 60.0  # s: window of the log rate limit
LOG_BURST = 5  # log lines per window; the rest are counted and summarised
MAX_DETAIL_CHARS = 200  # characters of a rejected message's description kept in the log
MAX_TEMPLATES = 256  # message templates RateLimitFilter tracks at once

Clock = Callable[[], float]


class Rejections:
    """Counts rejected messages by reason (a fixed code chosen by the caller, never text
    from the message, so the dict stays small) and logs them at a bounded rate."""

    def __init__(self, *, logger: logging.Logger, what: str, interval_s: float = LOG_INTERVAL_S,
                 burst: int = LOG_BURST, clock: Clock = time.monotonic) -> None:
        if interval_s <= 0 or burst < 1:
            raise ValueError("interval_s > 0 and burst >= 1 are required")
        self.total = 0
        self.by_reason: dict[str, int] = {}
        self.last: str | None = None
        self._log = logger
        self._what = what
        self._interval_s = interval_s
        self._burst = burst
        self._clock = clock
        self._window_start = -float("inf")
        self._logged = 0
        self._suppressed = 0

    def reject(self, reason: str, detail: str) -> None:
        self.total += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        # repr(): control characters or newlines from a hostile topic cannot forge log lines.
        text = ascii(detail[:MAX_DETAIL_CHARS])
        self.last = f"{reason}: {text}"
        now = self._clock()
        if now - self._window_start >= self._interval_s:
            if self._suppressed:
                self._log.warning("%d more rejected %s not logged in the last %.0f s",
                                  self._suppressed, self._what, self._interval_s)
            self._window_start, self._logged, self._suppressed = now, 0, 0
        if self._logged < self._burst:
            self._logged += 1
            self._log.warning("rejected %s (%s): %s", self._what, reason, text)
        else:
            self._suppressed += 1


class RateLimitFilter(logging.Filter):
    """Lets at most `burst` records of each message template through per `interval_s`.

    For the MQTT library's own logger: it warns once per message it discards when its
    incoming queue is full, which a flood would turn into a flood of log lines. Templates
    (`record.msg`, before formatting) come from library code, so the table stays small; it
    is cleared if it ever holds MAX_TEMPLATES.
    """

    def __init__(self, *, interval_s: float = LOG_INTERVAL_S, burst: int = LOG_BURST,
                 clock: Clock = time.monotonic) -> None:
        super().__init__()
        self.suppressed = 0
        self._interval_s = interval_s
        self._burst = burst
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:MAX_DETAIL_CHARS]
        now = self._clock()
        start, count = self._windows.get(key, (-float("inf"), 0))
        if now - start >= self._interval_s:
            start, count = now, 0
        if len(self._windows) >= MAX_TEMPLATES and key not in self._windows:
            self._windows.clear()
        self._windows[key] = (start, count + 1)
        if count < self._burst:
            return True
        self.suppressed += 1
        return False


@dataclass
class TokenBucket:
    """Allows `rate` units per second on average and bursts of up to `burst` units."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, *, rate: float, burst: float, now: float) -> TokenBucket:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"a rate limit needs rate > 0 and burst > 0, got {rate}, {burst}")
        return cls(rate=rate, burst=burst, tokens=burst, stamp=now)

    def take(self, amount: float, now: float) -> bool:
        """Takes `amount` units if there are enough; False (and takes nothing) otherwise."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True
