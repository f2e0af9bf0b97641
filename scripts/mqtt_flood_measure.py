"""MQTT flood measurement (issue 10): event-loop lag and the audio three real-time 48 kHz
satellites get through, while another process floods the broker at full speed.

    .venv/bin/python scripts/mqtt_flood_measure.py tests 12 flood-others [allow]

MODE: `noflood`; `flood-others` (homeassistant/status, nested JSON on harken/hub/set and
frames under 20 made-up site names); `flood` (that, plus malformed frames on satellite
sat0's own topic). `allow`: mqtt.allowed_sites = the three satellites. Prints one JSON line:
loop lag (10 ms ticks) max/p99/p50, process and loop-thread CPU per second, the share of
each satellite's audio that reached the engine (1.0 = all), rejections and the counters.
Runs against whatever `harken` the interpreter imports (PYTHONPATH can point at an older
tree: the before/after figures in docs/mqtt.md were made that way). Needs mosquitto.
WARMUP_S (default 1): seconds of streaming and flooding before the measured window (the own
subscriptions' figures use 4: a satellite gets its own subscription after 2 s).
"""
import asyncio, io, json, os, statistics, sys, time, wave
from pathlib import Path
import numpy as np

sys.path.insert(0, sys.argv[1])
from mosquitto import Mosquitto  # noqa: E402
from mqtt_flooder import Flooder  # noqa: E402

from harken.engine.mqtt.client import MqttSettings
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions

SECONDS = float(sys.argv[2])
FLOOD = sys.argv[3] in ("flood", "flood-others")
OWN_TOPIC = sys.argv[3] == "flood"  # also malformed frames on sat0's own topic
ALLOW = len(sys.argv) > 4 and sys.argv[4] == "allow"
RATE = 48_000
FRAME = 1024


def wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


async def main() -> None:
    rng = np.random.default_rng(1)
    frames = [wav(rng.standard_normal(FRAME) * 3000, RATE) for _ in range(16)]
    quiet16 = wav(np.zeros(1024), 16_000)
    with Mosquitto(Path(f"/tmp/harken-measure-{os.getpid()}")) as broker:
        settings = MqttSettings(host=broker.host, port=broker.port)
        source = SatelliteSource(settings=settings, client_id="harken-hub-audio",
                                 limits=SiteLimits(max_sites=8, allow=frozenset({"sat0", "sat1", "sat2"}) if ALLOW else frozenset()))
        sink = MqttSink(settings=settings, options=MqttSinkOptions(
            site="hub", sites_from_streams=True, ha_discovery=True))
        done = asyncio.Event()

        async def no_events():
            await done.wait()
            return
            yield

        samples: dict[str, int] = {}
        lags: list[float] = []

        async def consume():
            async for block in source.blocks():
                samples[block.stream] = samples.get(block.stream, 0) + block.samples.size

        loop_cpu = [0.0]

        async def monitor():
            tick = 0.01
            c0 = time.thread_time()
            while not done.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(tick)
                lags.append(time.perf_counter() - t0 - tick)
            loop_cpu[0] = time.thread_time() - c0

        async with source:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sink.consume(no_events()))
                tg.create_task(consume())
                await source.wait_connected()
                await sink.wait_connected()
                sats = [Flooder(broker.port, [(f"hermes/audioServer/sat{i}/audioFrame", f)
                                              for f in frames], rate_hz=RATE / FRAME)
                        for i in range(3)]
                flood_msgs = [("homeassistant/status", b"online"),
                              ("harken/hub/set", b"[" * 4000),
                              *([("hermes/audioServer/sat0/audioFrame", b"RIFF" + b"\0" * 40)]
                                if OWN_TOPIC else []),
                              *[(f"hermes/audioServer/fake{i}/audioFrame", quiet16)
                                for i in range(20)]]
                for s in sats:
                    s.__enter__()
                flood = Flooder(broker.port, flood_msgs) if FLOOD else None
                if flood:
                    flood.__enter__()
                await asyncio.sleep(float(os.environ.get("WARMUP_S", "1")))  # warm-up
                lags.clear()
                base = dict(samples)
                mon = tg.create_task(monitor())
                cpu0, t0 = time.process_time(), time.monotonic()
                await asyncio.sleep(SECONDS)
                cpu1, t1 = time.process_time(), time.monotonic()
                got = {k: v - base.get(k, 0) for k, v in samples.items()}
                done.set()
                await mon
                if flood:
                    flood.__exit__(None, None, None)
                for s in sats:
                    s.__exit__(None, None, None)
                source.stop()
    lags.sort()
    expect = (t1 - t0) * 16_000
    out = {
        "flood": sys.argv[3], "seconds": round(t1 - t0, 2),
        "loop_lag_max_ms": round(lags[-1] * 1e3, 2),
        "loop_lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1e3, 2),
        "loop_lag_p50_ms": round(statistics.median(lags) * 1e3, 2),
        "process_cpu_s_per_s": round((cpu1 - cpu0) / (t1 - t0), 3),
        "loop_thread_cpu_s_per_s": round(loop_cpu[0] / (t1 - t0), 3),
        "allow": ALLOW,
        "sat_audio_ratio": {k: round(v / expect, 3) for k, v in sorted(got.items()) if k.startswith("sat")},
        "flood_sent": flood.sent if flood else 0,
        "source_rejections": source.rejections.by_reason,
        "source_counters": source.stream_counters("sat0") if hasattr(source, "stream_counters") else {"dropped_blocks": source.dropped_blocks},
        "sink_counters": {k: v for k, v in sink.counters().items() if "incoming" in k or "rejected" in k or "coalesced" in k},
        "load_avg": os.getloadavg(),
    }
    print(json.dumps(out))


asyncio.run(main())
