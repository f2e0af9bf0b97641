"""Event-loop time of one satellite frame (issue 10): SatelliteSource.on_frame called on the
running loop, for three frame sizes (decoded and resampled there before the decoder thread;
handed to it since). Needs mosquitto.

    .venv/bin/python scripts/mqtt_frame_cost.py tests
"""
import asyncio, io, json, os, statistics, sys, time, wave
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from mosquitto import Mosquitto  # noqa: E402
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits


def wav(n, rate, ch, width):
    rng = np.random.default_rng(0)
    dt = {2: "<i2", 4: "<i4"}[width]
    x = (rng.standard_normal(n * ch) * (3000 if width == 2 else 3000 << 16)).astype(dt)
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(ch); w.setsampwidth(width); w.setframerate(rate); w.writeframes(x.tobytes())
    return b.getvalue()


CASES = {"1024 samples 48kHz 16-bit mono (2 kB)": wav(1024, 48000, 1, 2),
         "0.5 s 48kHz 32-bit stereo (192 kB)": wav(24000, 48000, 2, 4),
         "5.4 s 48kHz 16-bit mono (512 kB, the frame size limit)": wav(262000, 48000, 1, 2)}


async def main():
    out = {}
    with Mosquitto(Path(f"/tmp/harken-fc-{os.getpid()}")) as broker:
        limits = SiteLimits(max_audio_ratio=1e6, max_frames_per_s=1e6, max_bytes_per_s=1e12)
        async with SatelliteSource(settings=MqttSettings(host=broker.host, port=broker.port),
                                   client_id="fc", limits=limits) as source:
            async def drain():
                async for _ in source.blocks():
                    pass
            task = asyncio.create_task(drain())
            for name, frame in CASES.items():
                wall, cpu = [], []
                for i in range(60):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    source.on_frame(f"hermes/audioServer/s{len(out)}/audioFrame", frame)
                    wall.append(time.perf_counter() - t0); cpu.append(time.thread_time() - c0)
                    await asyncio.sleep(0.03)
                wall, cpu = wall[10:], cpu[10:]  # warm-up
                out[name] = {"loop_wall_ms_median": round(statistics.median(wall) * 1e3, 3),
                             "loop_wall_ms_max": round(max(wall) * 1e3, 3),
                             "loop_cpu_ms_median": round(statistics.median(cpu) * 1e3, 3)}
            source.stop()
            await task
    out["rejections"] = source.rejections.by_reason
    out["load_avg"] = os.getloadavg()
    print(json.dumps(out))

asyncio.run(main())
