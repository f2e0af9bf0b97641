"""Input files checked before any model loads (shared by run and transcribe)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from harken.engine.sources.file import FileSource


def check_files(paths: Sequence[Path]) -> dict[Path, float]:
    """Opens each input before torch is even imported: a bad file fails in a blink.
    Returns each file's duration in seconds (from its header)."""
    durations: dict[Path, float] = {}

    async def check() -> None:
        for path in paths:
            async with FileSource(path=path, stream_id="check") as source:
                durations[path] = source.duration_s

    asyncio.run(check())
    return durations
