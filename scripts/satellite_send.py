"""Send an audio file as a Hermes satellite would: small WAV frames on
hermes/audioServer/<site>/audioFrame, paced in real time (docs/mqtt.md, "Try it locally").

    .venv/bin/python scripts/satellite_send.py assets/sample.wav --site kitchen --port 1883

A development tool: Harken itself never sends audio.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
import wave
from pathlib import Path

import aiomqtt
import numpy as np
import soundfile as sf
import soxr

RATE = 16_000  # Hz, what Rhasspy satellites send
FRAME_SAMPLES = 512  # 32 ms per message


def frames(path: Path) -> list[bytes]:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)
    pcm = np.round(np.clip(mono, -1.0, 1.0) * 32767).astype("<i2")
    out = []
    for start in range(0, pcm.size, FRAME_SAMPLES):
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(pcm[start:start + FRAME_SAMPLES].tobytes())
        out.append(buf.getvalue())
    return out


async def send(args: argparse.Namespace) -> None:
    payloads = frames(args.audio)
    topic = f"hermes/audioServer/{args.site}/audioFrame"
    async with aiomqtt.Client(args.host, port=args.port) as client:
        t0 = time.monotonic()
        for i, payload in enumerate(payloads):
            # Real time: frame i is sent when its audio would have been recorded.
            await asyncio.sleep(max(0.0, t0 + i * FRAME_SAMPLES / RATE - time.monotonic()))
            await client.publish(topic, payload)
    print(f"sent {len(payloads)} frames ({len(payloads) * FRAME_SAMPLES / RATE:.1f} s) "
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
