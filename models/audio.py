"""Audio constants every task model shares."""

from __future__ import annotations

SAMPLE_RATE = 16_000  # Hz: every model and the stream clock use 16 kHz mono float32
