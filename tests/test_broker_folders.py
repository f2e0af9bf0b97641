"""The embedded broker's private folders (engine/mqtt/broker.py): each names its owner, and
a start removes those whose owner is gone (a Harken killed with SIGKILL cannot remove its
own), never one of a live process. The real kill is in tests/test_mqtt_broker.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harken.engine.mqtt.broker import (
    FOLDER_PREFIX,
    _folder_prefix,
    process_start,
    remove_stale_folders,
)

NO_SUCH_PID = 2**22 + 1  # above Linux's largest possible pid (PID_MAX_LIMIT)


def _folder(tmp: Path, pid: int, start: int, rest: str = "abc_123") -> Path:
    path = tmp / f"{FOLDER_PREFIX}{pid}-{start}-{rest}"
    path.mkdir()
    (path / "mosquitto.conf").write_text("listener 1883\n")
    return path


@pytest.fixture
def exited() -> tuple[int, int]:
    """The pid and start time of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = process_start(child.pid)
    finally:
        child.kill()
        child.wait()
    assert start is not None
    return child.pid, start


def test_only_folders_of_owners_that_are_gone_are_removed(
        tmp_path: Path, exited: tuple[int, int]) -> None:
    me, my_start = os.getpid(), process_start(os.getpid())
    assert my_start is not None
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live_start = process_start(live.pid)
        assert live_start is not None
        gone = [_folder(tmp_path, *exited), _folder(tmp_path, NO_SUCH_PID, 5),
                # my pid, but a start time that is not mine: a pid reused since
                _folder(tmp_path, me, my_start + 1, "reused")]
        kept = [_folder(tmp_path, me, my_start), _folder(tmp_path, live.pid, live_start),
                tmp_path / f"{FOLDER_PREFIX}x1y2z3ab",  # an older Harken's: no owner in it
                tmp_path / "unrelated"]
        for path in kept[2:]:
            path.mkdir()
        not_a_folder = tmp_path / f"{FOLDER_PREFIX}{NO_SUCH_PID}-1-file"
        not_a_folder.write_text("")
        target = tmp_path / "target"
        target.mkdir()
        link = tmp_path / f"{FOLDER_PREFIX}{NO_SUCH_PID}-2-link"
        link.symlink_to(target)
        kept += [not_a_folder, target, link]

        removed = remove_stale_folders(tmp_path)
    finally:
        live.kill()
        live.wait()
    assert sorted(removed) == sorted(gone)
    assert not any(path.exists() for path in gone)
    assert all(path.exists() or path.is_symlink() for path in kept)


def test_a_missing_temp_folder_is_nothing_to_tidy(tmp_path: Path) -> None:
    assert remove_stale_folders(tmp_path / "missing") == []


def test_the_folder_of_a_broker_names_this_process(tmp_path: Path) -> None:
    made = Path(tempfile.mkdtemp(prefix=_folder_prefix(), dir=tmp_path))  # as the broker does
    me = f"{FOLDER_PREFIX}{os.getpid()}-"
    assert made.name.startswith(f"{me}{process_start(os.getpid())}-")
    assert remove_stale_folders(tmp_path) == []  # its owner lives
    stale = made.rename(tmp_path / made.name.replace(me, f"{FOLDER_PREFIX}{NO_SUCH_PID}-"))
    assert remove_stale_folders(tmp_path) == [stale]  # the same name, its owner gone
