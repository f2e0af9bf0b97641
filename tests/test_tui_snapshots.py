"""Snapshots of the terminal app's screens with scripted, deterministic content.

Update after an intended change of the layout with `pytest tests/test_tui_snapshots.py
--snapshot-update`, and look at the SVGs in tests/__snapshots__ before committing them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from tui_fakes import demo_script, scripted_app

from harken.app.tui.app import HarkenApp

WAIT_S = 20.0
SnapCompare = Callable[..., bool]


async def settled(pilot: Pilot[Any]) -> None:
    """Wait for the script to end, then take the time-dependent highlight off."""
    app = pilot.app
    assert isinstance(app, HarkenApp)
    async with asyncio.timeout(WAIT_S):
        while not (app.session_done and app.state == "finished"):
            await pilot.pause(0.01)
    for row in app.keywords.rows:
        row.remove_class("-fresh")
    await pilot.pause()


def test_main_screen_120x36(snap_compare: SnapCompare, tmp_path: Path) -> None:
    app, _ = scripted_app(demo_script(), out_dir=tmp_path)
    assert snap_compare(app, terminal_size=(120, 36), run_before=settled)


def test_main_screen_80x24(snap_compare: SnapCompare, tmp_path: Path) -> None:
    app, _ = scripted_app(demo_script(), out_dir=tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled)


def test_translation_pane_80x24(snap_compare: SnapCompare, tmp_path: Path) -> None:
    app, _ = scripted_app(demo_script(), out_dir=tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled, press=["t"])


def test_help_80x24(snap_compare: SnapCompare, tmp_path: Path) -> None:
    app, _ = scripted_app(demo_script(), out_dir=tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=settled,
                        press=["question_mark"])
