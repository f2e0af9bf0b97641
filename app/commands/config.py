"""`harken config show`: every setting, its value and where it came from."""

from __future__ import annotations

import argparse
import json

from harken.app import flags
from harken.app.config import describe
from harken.app.tasks.thresholds import thresholds


def run(args: argparse.Namespace) -> int:
    loaded = flags.load(args)
    # Speaker thresholds left unset resolve per model (models/calibration.py): show the
    # value a run would use and where it comes from, not a bare null.
    resolved = {f"speakers.{key}": r for key, r in thresholds(loaded.config).items()}
    rows = [(key, resolved[key].value, resolved[key].origin)
            if value is None and key in resolved else (key, value, origin)
            for key, value, origin in describe(loaded)]
    if args.json:
        print(json.dumps({k: {"value": v, "from": o} for k, v, o in rows}, indent=2))
        return 0
    print(f"# config file: {loaded.path or 'none (defaults)'}")
    width = max(len(k) for k, _, _ in rows)
    for key, value, origin in rows:
        print(f"{key:<{width}}  {json.dumps(value):<36}  {origin}")
    return 0
