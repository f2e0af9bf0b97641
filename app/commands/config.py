"""`harken config show`: every setting, its value and where it came from."""

from __future__ import annotations

import argparse
import json

from harken.app import flags
from harken.app.config import default_config_path, describe, printable
from harken.app.tasks.thresholds import thresholds
from harken.engine.mqtt.topics import default_site


def run(args: argparse.Namespace) -> int:
    loaded = flags.load(args)
    # Speaker thresholds left unset resolve per model (models/calibration.py): show the
    # value a run would use and where it comes from, not a bare null.
    resolved = {f"speakers.{key}": r for key, r in thresholds(loaded.config).items()}
    resolved_values: dict[str, tuple[object, str]] = {
        key: (r.value, r.origin) for key, r in resolved.items()}
    if not loaded.config.mqtt.site:  # empty: the host name, as a run would use it
        resolved_values["mqtt.site"] = (default_site(), "default: this machine's host name")
    rows = [(key, *resolved_values[key])
            if value in (None, "") and key in resolved_values else (key, value, origin)
            for key, value, origin in describe(loaded)]
    if args.json:
        print(json.dumps({k: {"value": v, "from": o} for k, v, o in rows}, indent=2))
        return 0
    # No file: say where one would be read from, so a first config lands in the right place.
    where = loaded.path or (f"none (defaults); create {printable(str(default_config_path()))}"
                            " or pass --config FILE")
    print(f"# config file: {where}")
    width = max(len(k) for k, _, _ in rows)
    for key, value, origin in rows:
        print(f"{key:<{width}}  {json.dumps(value):<36}  {origin}")
    return 0
