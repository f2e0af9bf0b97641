"""`harken config show`: every setting, its value and where it came from."""

from __future__ import annotations

import argparse
import json

from harken.app import flags
from harken.app.config import describe


def run(args: argparse.Namespace) -> int:
    loaded = flags.load(args)
    rows = describe(loaded)
    if args.json:
        print(json.dumps({k: {"value": v, "from": o} for k, v, o in rows}, indent=2))
        return 0
    print(f"# config file: {loaded.path or 'none (defaults)'}")
    width = max(len(k) for k, _, _ in rows)
    for key, value, origin in rows:
        print(f"{key:<{width}}  {json.dumps(value):<36}  {origin}")
    return 0
