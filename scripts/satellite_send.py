"""Send an audio file as a Hermes satellite would: small WAV frames on
hermes/audioServer/<site>/audioFrame, paced in real time (docs/mqtt.md, "Try it locally").

    .venv/bin/python scripts/satellite_send.py assets/sample.wav --site kitchen --port 1883

A development tool: Harken itself never sends audio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiomqtt
import soundfile as sf
import soxr

from harken.app.bench.soak import wav_frame
from harken.models.audio import SAMPLE_RATE

FRAME_SAMPLES = 512  # 32 ms per message


def frames(path: Path) -> list[bytes]:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    # The same 16-bit WAV chunks as the soak's synthetic satellites.
    return [wav_frame(mono[start:start + FRAME_SAMPLES])
            for start in range(0, mono.size, FRAME_SAMPLES)]


async def send(args: argparse.Namespace) -> None:
    payloads = frames(args.audio)
    topic = f"hermes/audioServer/{args.site}/audioFrame"
    async with aiomqtt.Client(args.host, port=args.port) as client:
        t0 = time.monotonic()
        for i, payload in enumerate(payloads):
            # Real time: frame i is sent when its audio would have been recorded.
            await asyncio.sleep(max(0.0, t0 + i * FRAME_SAMPLES / SAMPLE_RATE - time.monotonic()))
            await client.publish(topic, payload)
    print(f"sent {len(payloads)} frames ({len(payloads) * FRAME_SAMPLES / SAMPLE_RATE:.1f} s) "
          f"to {topic}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", type=Path, help="any audio file soundfile reads")
    parser.add_argument("--site", default="kitchen", help="the satellite's site id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    try:
        asyncio.run(send(args))
    except (OSError, sf.LibsndfileError, aiomqtt.MqttError) as exc:
        print(f"satellite_send: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
