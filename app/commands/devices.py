"""`harken devices`: the audio input devices."""

from __future__ import annotations

import argparse
import sys

from harken.engine.sources.mic import list_input_devices


def run(args: argparse.Namespace) -> int:
    devices = list_input_devices()
    if not devices:
        print("harken: no audio input devices found; connect a microphone (and check its "
              "permissions), or read a file instead: `harken run --input FILE`",
              file=sys.stderr)
        return 1
    print(f"{'index':>5}  {'channels':>8}  {'rate':>7}  name")
    for d in devices:
        mark = " (default)" if d.is_default else ""
        print(f"{d.index:>5}  {d.channels:>8}  {d.default_samplerate:>7.0f}  {d.name}{mark}")
    return 0
