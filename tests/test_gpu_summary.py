"""scripts/gpu_summary.py: the table a device call's reply ends with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_summary.py"


def _run(n: int, wall: float) -> dict[str, object]:
    return {"streams": n, "wall_s": wall, "final_latency_p95_s": 0.2, "kept_up": True,
            "missed": [], "skipped": {"caption_steps_merged": 0}}


def summary(out: Path) -> list[str]:
    done = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True,
                          text=True, check=True, timeout=60)
    return done.stdout.splitlines()


def test_each_run_once_and_parts_not_run_say_so(tmp_path: Path) -> None:
    both, webrtc = [_run(2, 10.1), _run(4, 10.2)], [_run(8, 10.3), _run(16, 10.4)]
    log = ["== streams-both-pool", "== streams-both-pool: rc=0 in 30 s",
           "== streams-webrtc", *(json.dumps(r) for r in webrtc), "loading ...",
           "== streams-webrtc: rc=124 in 150 s",  # stopped: its file stays empty
           "== streams-both", *(json.dumps(r) for r in both), "== streams-both: rc=0 in 40 s"]
    (tmp_path / "log.txt").write_text("\n".join(log) + "\n")
    (tmp_path / "streams_both.json").write_text(json.dumps({"runs": both}))
    (tmp_path / "streams_webrtc.json").write_text("")
    (tmp_path / "streams_both_pool.json").write_text("{not json")
    lines = summary(tmp_path)
    runs = [json.loads(x)["streams"] for x in lines if x.startswith("{")]
    assert sorted(runs) == [2, 4, 8, 16]  # each once: the file's, or the log's if no file
    text = "\n".join(lines)
    assert "# streams_3tasks: not run" in text
    assert "# captions_1: not run" in text
    assert "# micro: not run" in text
    assert "No such file" not in text
    assert "streams_webrtc.json is empty" in text
    assert "from log.txt" in text
    assert "# streams_both_pool: unreadable" not in text  # says why, not a dict
    assert "streams_both_pool.json: Expecting" in text
