"""Event-loop CPU per satellite frame on each path since the own subscriptions (issue 10;
median of 280, thread_time, 1024 samples at 48 kHz): on_frame (the path before, and still
the end of every path), on_wild_frame for a site on the wildcard, on_own_frame for a
handed-over site, and the wildcard connection's duplicate check (inbox.family_of ->
DISCARD). Against an older tree (PYTHONPATH) only on_frame is measured. Needs mosquitto.

    .venv/bin/python scripts/mqtt_frame_path_cost.py tests
"""
import asyncio, io, json, os, statistics, sys, time, wave
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from mosquitto import Mosquitto  # noqa: E402
from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits


def wav(n, rate):
    x = (np.random.default_rng(0).standard_normal(n) * 3000).astype("<i2")
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate); w.writeframes(x.tobytes())
    return b.getvalue()


async def main():
    frames = [wav(1024, 48000)[:-2] + bytes([i % 256, i // 256]) for i in range(400)]
    out = {}
    with Mosquitto(Path(f"/tmp/harken-fpc-{os.getpid()}")) as broker:
        limits = SiteLimits(max_audio_ratio=1e6, max_frames_per_s=1e6, max_bytes_per_s=1e12)
        async with SatelliteSource(settings=MqttSettings(host=broker.host, port=broker.port),
                                   client_id="fpc", limits=limits) as source:
            async def drain():
                async for _ in source.blocks():
                    pass
            task = asyncio.create_task(drain())

            async def case(name, call, topic):
                cpu = []
                for i in range(300):
                    c0 = time.thread_time()
                    call(topic, frames[i])
                    cpu.append(time.thread_time() - c0)
                    await asyncio.sleep(0.005)
                out[name] = round(statistics.median(cpu[20:]) * 1e6, 1)

            await case("on_frame_us", source.on_frame, "hermes/audioServer/a/audioFrame")
            if hasattr(source, "on_wild_frame"):
                from harken.engine.mqtt.handover import Handover
                await case("on_wild_frame_no_handover_us", source.on_wild_frame,
                           "hermes/audioServer/b/audioFrame")
                t = "hermes/audioServer/c/audioFrame"
                source.on_frame(t, frames[0])
                await asyncio.sleep(0.05)
                h = Handover(now=0.0); h.subscribed(0.0); h.expire(1e9)
                source._handovers[t] = h
                source._sites["c"].own = h
                await case("on_own_frame_own_phase_us", source.on_own_frame, t)
                await case("wildcard_duplicate_discard_us",
                           lambda topic, payload: source.inbox.family_of(topic), t)
            source.stop()
            await task
    out["load_avg"] = os.getloadavg()
    print(json.dumps(out))

asyncio.run(main())
