"""A short table of what scripts/gpu_measure.sh wrote (the device call's reply shows its end)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RUN_KEYS = ("streams", "final_latency_p50_s", "final_latency_p95_s", "partial_latency_p95_s",
            "finals_missing", "mean_batch", "event_loop_busy", "event_loop_lag_p99_ms",
            "cpu_cores_used", "gpu_peak_memory_mb", "kept_up", "missed")
STREAMS_STEPS = ("streams_both_pool", "streams_3tasks", "streams_webrtc", "streams_both")
NOT_RUN = "not run"


def load(path: Path) -> Any:
    """The file's JSON (a list of rows for .jsonl), or NOT_RUN for a file the measurement
    never wrote (a part left out of PARTS), or {"unreadable": why}."""
    if not path.exists():
        return NOT_RUN
    try:
        text = path.read_text()
        if not text.strip():
            return {"unreadable": f"{path.name} is empty (its step stopped before writing it; "
                                  "see log.txt)"}
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return json.loads(text)
    except (OSError, ValueError) as exc:
        return {"unreadable": f"{path.name}: {exc}"}


def logged_runs(log: Path) -> dict[str, list[dict[str, Any]]]:
    """Each step's bench streams runs as logged when they ended, by output file stem
    (`== streams-webrtc` starts the runs of streams_webrtc.json)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    step = ""
    for line in log.read_text().splitlines() if log.is_file() else []:
        if line.startswith("== ") and ": rc=" not in line:
            step = line[3:].strip().replace("-", "_")
        elif line.startswith('{"streams"'):
            try:
                runs.setdefault(step, []).append(json.loads(line))
            except ValueError:  # cut off by the step's time limit
                continue
    return runs


def why(data: Any) -> str:
    """What load() says of a file with no result."""
    return data if data == NOT_RUN else str(data.get("unreadable", "")) \
        if isinstance(data, dict) else "no runs"


def row(run: dict[str, Any]) -> str:
    out = {k: run.get(k) for k in RUN_KEYS}
    out["skipped"] = {k: v for k, v in run.get("skipped", {}).items() if v}
    return json.dumps(out)


def main(out: Path) -> None:
    logged = logged_runs(out / "log.txt")
    for name in STREAMS_STEPS:
        data = load(out / f"{name}.json")
        runs = data.get("runs") if isinstance(data, dict) else None
        if runs is None and name in logged:
            # A step stopped at its time limit writes no file: its finished runs are logged.
            print(f"# {name}: {why(data)}; the runs it finished, from log.txt")
            runs = logged[name]
        elif runs is None:
            print(f"# {name}: {why(data)}")
            continue
        else:
            print(f"# {name}")
        for run in runs:
            print(row(run))
    captions = load(out / "captions_1.json")
    print("# captions_1:", captions if captions == NOT_RUN else json.dumps(captions)[:600])
    micro = load(out / "micro.jsonl")
    print("# micro" + (f": {NOT_RUN}" if micro == NOT_RUN else ""))
    for item in micro if isinstance(micro, list) else [] if micro == NOT_RUN else [micro]:
        print(json.dumps(item))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
