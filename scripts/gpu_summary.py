"""A short table of what scripts/gpu_measure.sh wrote (the device call's reply shows its end)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RUN_KEYS = ("streams", "final_latency_p50_s", "final_latency_p95_s", "partial_latency_p95_s",
            "finals_missing", "mean_batch", "event_loop_busy", "event_loop_lag_p99_ms",
            "cpu_cores_used", "gpu_peak_memory_mb", "kept_up")


def load(path: Path) -> Any:
    try:
        text = path.read_text()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return json.loads(text)
    except (OSError, ValueError) as exc:
        return {"unreadable": f"{path.name}: {exc}"}


def main(out: Path) -> None:
    print("# every bench streams run, as logged when it ended (in step order)")
    log = out / "log.txt"
    for line in log.read_text().splitlines() if log.is_file() else []:
        if line.startswith('{"streams"'):
            run = json.loads(line)
            row = {k: run.get(k) for k in RUN_KEYS}
            row["skipped"] = {k: v for k, v in run.get("skipped", {}).items() if v}
            print(json.dumps(row))
    for name in ("streams_webrtc", "streams_both", "streams_both_pool", "streams_3tasks"):
        data = load(out / f"{name}.json")
        print(f"# {name}: {data.get('unreadable', '')}")
        for run in data.get("runs", []):
            row = {k: run.get(k) for k in RUN_KEYS}
            row["skipped"] = {k: v for k, v in run.get("skipped", {}).items() if v}
            print(json.dumps(row))
    captions = load(out / "captions_1.json")
    print("# captions_1:", json.dumps(captions)[:600])
    for name in ("micro",):
        print(f"# {name}")
        data = load(out / f"{name}.jsonl")
        for row in data if isinstance(data, list) else [data]:
            print(json.dumps(row))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
