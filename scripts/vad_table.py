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
from harken.engine.audio import AudioBlock
from harken.engine.vad import SegmentStart, VadOptions, VadSegmenter
from harken.models.audio import SAMPLE_RATE
from harken.models.silero_vad import CHUNK_SAMPLES, load_silero_vad, silero_model_path

CLIPS = {"pyannote_sample": ("pyannote_sample/sample.wav", "pyannote_sample/sample.rttm"),
         "ami_dev00": ("ami_dev00/dev00.flac", "ami_dev00/dev00.rttm")}
ENGINES = ("webrtc", "silero", "both")
TONE_HZ = 1000.0
TONE_PEAK = 0.1  # -20 dBFS peak (a sine's RMS is 3 dB lower)


def tone(n: int) -> np.ndarray:
    return (TONE_PEAK * np.sin(2 * np.pi * TONE_HZ * np.arange(n) / SAMPLE_RATE)).astype(
        np.float32)


def emitted_starts(x: np.ndarray, engine: str, block: int = 160) -> list[int]:
    """Stream position at which each SegmentStart came out, fed in 10 ms blocks."""
    seg = VadSegmenter(VadOptions(engine=engine))  # type: ignore[arg-type]
    at = []
    for pos in range(0, x.size, block):
        out = seg.feed(AudioBlock(stream="t", start=pos, samples=x[pos:pos + block]))
        at += [pos + block for o in out if isinstance(o, SegmentStart)]
    return at


def onset_delays(x: np.ndarray) -> list[float]:
    """For each webrtcvad-alone onset, how much later `both` said speech_started (s)."""
    both = emitted_starts(x, "both")
    delays = []
    for w in emitted_starts(x, "webrtc"):
        later = [b - w for b in both if abs(b - w) <= SAMPLE_RATE]
        if later:
            delays.append(min(later, key=abs) / SAMPLE_RATE)
    return delays


def runtimes(x: np.ndarray) -> None:
    """CPU per chunk: the ONNX network Harken runs vs the package's TorchScript model."""
    import torch

    chunks = [x[i:i + CHUNK_SAMPLES] for i in range(0, x.size - CHUNK_SAMPLES + 1, CHUNK_SAMPLES)]
    stream = load_silero_vad().stream()
    started = time.process_time()
    for c in chunks:
        stream(c)
    onnx_s = time.process_time() - started
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the package sets it on import
    jit = torch.jit.load(str(silero_model_path().with_name("silero_vad.jit")), map_location="cpu")
    jit.eval()
    with torch.inference_mode():
        started = time.process_time()
        for c in chunks:
            jit(torch.from_numpy(c), SAMPLE_RATE)
        jit_s = time.process_time() - started
    torch.set_num_threads(threads)
    hours = len(chunks) * CHUNK_SAMPLES / SAMPLE_RATE / 3600
    for name, cpu in (("onnxruntime", onnx_s), ("torch.jit", jit_s)):
        print(f"  silero via {name}: {1e6 * cpu / len(chunks):.0f} us per {CHUNK_SAMPLES}-sample "
              f"chunk = {cpu / hours:.1f} s per hour of audio")


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

    print("\nspeech_started of `both` after webrtcvad's own (10 ms blocks), per onset:")
    for name, (x, _) in clips.items():
        delays = onset_delays(x)
        print(f"  {name}: {len(delays)} onsets, max {max(delays):+.3f} s, "
              f"mean {float(np.mean(delays)):+.3f} s")

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
    runtimes(joined)


if __name__ == "__main__":
    main()
