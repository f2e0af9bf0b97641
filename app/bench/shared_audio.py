"""Where the workplace's real recorded speech is (../shared/audio, with its README): the
benches that measure on real speech look here, from the project or from a worktree."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "HARKEN_SHARED_AUDIO"  # a folder; as the tests read it
ROOT = Path(__file__).resolve().parents[2]  # the project (app/bench/ is two below it)


def shared_audio_root() -> Path | None:
    """$HARKEN_SHARED_AUDIO, else ../shared/audio beside the project or beside the folder
    that holds it (a worktree under ../wt/); None when none is there."""
    named = os.environ.get(ENV)
    if named:
        return Path(named)
    for shared in (ROOT.parent / "shared" / "audio", ROOT.parent.parent / "shared" / "audio"):
        if shared.is_dir():
            return shared
    return None
