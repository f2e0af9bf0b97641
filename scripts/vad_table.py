"""The VAD table of docs/vad.md: detection error per engine on the shared dev clips, clean and
with a steady 1 kHz tone mixed in, and the VAD's CPU time per hour of audio.

    .venv/bin/python scripts/vad_table.py [--shared ../shared/audio] [--minutes 10]

Uses the same code as `harken eval vad` (app/eval/vad.py); the tone is added here because
the CLI scores files as they are.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from harken.app.eval.rttm import recording_turns
from harken.app.eval.vad import array_blocks, detection_figures, run_vad
from harken.engine.vad import VadOptions
from harken.models.audio import SAMPLE_RATE

CLIPS = {"pyannote_sample": ("pyannote_sample/sample.wav", "pyannote_sample/sample.rttm"),
         "ami_dev00": ("ami_dev00/dev00.flac", "ami_dev00/dev00.rttm")}
ENGINES = ("webrtc", "silero", "both")
TONE_HZ = 1000.0
TONE_PEAK = 0.1  # -20 dBFS peak (a sine's RMS is 3 dB lower)


def tone(n: int) -> np.ndarray:
    return (TONE_PEAK * np.sin(2 * np.pi * TONE_HZ * np.arange(n) / SAMPLE_RATE)).astype(
        np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--shared", type=Path, default=root.parent / "shared" / "audio")
    parser.add_argument("--minutes", type=float, default=10.0, help="audio for the CPU figure")
    parser.add_argument("--collar", type=float, default=0.0)
    args = parser.parse_args()
    clips = {}
    for name, (audio, rttm) in CLIPS.items():
        path = args.shared / "diarization" / audio
        x, rate = sf.read(str(path), dtype="float32")
        if rate != SAMPLE_RATE or x.ndim != 1:
            raise SystemExit(f"{path}: expected 16 kHz mono")
        clips[name] = (x, recording_turns(args.shared / "diarization" / rttm, path.stem))

    print(f"collar {args.collar} s; tone: {TONE_HZ:.0f} Hz at peak {TONE_PEAK} (-20 dBFS)")
    print("| clip | engine | miss | false alarm | detection error | segments | mean length s "
          "| with tone: miss | false alarm | detection error | false alarm rise |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (x, turns) in clips.items():
        for engine in ENGINES:
            vad = VadOptions(engine=engine)  # type: ignore[arg-type]
            clean = detection_figures(run_vad(array_blocks(x), vad), turns, collar=args.collar)
            noisy_x = np.clip(x + tone(x.size), -1.0, 1.0)
            noisy = detection_figures(run_vad(array_blocks(noisy_x), vad), turns,
                                      collar=args.collar)
            print(f"| {name} | {engine} | {clean['miss']:.3f} | {clean['false_alarm']:.3f} | "
                  f"{clean['detection_error_rate']:.3f} | {clean['segments']} | "
                  f"{clean['mean_segment_s']:.2f} | {noisy['miss']:.3f} | "
                  f"{noisy['false_alarm']:.3f} | {noisy['detection_error_rate']:.3f} | "
                  f"{noisy['false_alarm'] - clean['false_alarm']:+.3f} |")

    # CPU: the two clips repeated to --minutes, one stream, 0.1 s blocks as from a capture.
    joined = np.concatenate([x for x, _ in clips.values()])
    repeats = max(1, round(args.minutes * 60 * SAMPLE_RATE / joined.size))
    long = np.tile(joined, repeats)
    hours = long.size / SAMPLE_RATE / 3600
    print(f"\nCPU time of the VAD over {long.size / SAMPLE_RATE / 60:.1f} min of audio "
          f"({platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}):")
    for engine in ENGINES:
        vad = VadOptions(engine=engine)  # type: ignore[arg-type]
        blocks = array_blocks(long)
        run = run_vad(blocks, vad)
        print(f"  {engine}: {run.cpu_s:.2f} s CPU = {run.cpu_s / hours:.1f} s per hour of audio "
              f"({100 * run.cpu_s / (hours * 3600):.2f}% of one core)")


if __name__ == "__main__":
    main()
