"""`--mqtt embedded`: a broker on this machine for a one-machine setup.

    async with EmbeddedBroker(port=1883) as broker:
        settings = broker.settings          # what the sink / source connect to

The broker is amqtt, in this process (MQTT 3.1.1, retained messages and last wills, no
persistence: it lives as long as Harken runs). If amqtt is not installed, a mosquitto
binary on PATH is started as a child process instead, with a config written to a temporary
folder and stopped on exit. With neither, BrokerError says what to install.

It listens on 127.0.0.1 by default; pass host="0.0.0.0" to let Home Assistant or
satellites on other machines connect (there is no authentication: trusted networks only).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from harken.engine.mqtt.client import MqttSettings
from harken.models.errors import BrokerError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
MOSQUITTO_START_TIMEOUT_S = 10.0
MOSQUITTO_STOP_TIMEOUT_S = 5.0
SBIN_PATH = "/usr/sbin:/usr/local/sbin"

Backend = Literal["auto", "amqtt", "mosquitto"]


def mosquitto_binary() -> str | None:
    """mosquitto on PATH, or in the sbin folders Debian installs it to."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=SBIN_PATH)


def _in_use(host: str, port: int, detail: object) -> BrokerError:
    return BrokerError(f"cannot start the embedded MQTT broker on {host}:{port} ({detail}). "
                       "Is another broker already running there? Then use it with --mqtt "
                       f"mqtt://{host}:{port}, or choose another port (mqtt.embedded_port)")


class EmbeddedBroker:
    def __init__(self, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 backend: Backend = "auto") -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, got {port}")
        self.host = host
        self.port = port
        self.backend: Backend = backend
        self._amqtt: Any = None
        self._process: asyncio.subprocess.Process | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def settings(self) -> MqttSettings:
        """How a client on this machine connects (3.1.1: amqtt does not speak MQTT 5)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return MqttSettings(host=host, port=self.port,
                            protocol="3.1.1" if self.backend == "amqtt" else "auto")

    @property
    def description(self) -> str:
        return f"embedded MQTT broker ({self.backend}) on {self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        backend = self.backend
        if backend == "auto":
            if importlib.util.find_spec("amqtt") is not None:
                backend = "amqtt"
            elif mosquitto_binary() is not None:
                backend = "mosquitto"
            else:
                raise BrokerError("--mqtt embedded needs amqtt (pip install amqtt) or a "
                                  "mosquitto binary (e.g. apt install mosquitto); or point "
                                  "--mqtt at an existing broker: mqtt://host:1883")
        self.backend = backend
        try:
            if backend == "amqtt":
                await self._start_amqtt()
            else:
                await self._start_mosquitto()
        except BaseException:
            await self._close()  # no half-started broker (or stray process) is left behind
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._amqtt is not None:
            broker, self._amqtt = self._amqtt, None
            await broker.shutdown()
        if self._process is not None:
            process, self._process = self._process, None
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), MOSQUITTO_STOP_TIMEOUT_S)
                except TimeoutError:
                    process.kill()
                    await process.wait()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def _start_amqtt(self) -> None:
        try:
            from amqtt.broker import Broker
            from amqtt.broker import BrokerError as AmqttBrokerError
        except ImportError as exc:
            raise BrokerError("amqtt is not installed: pip install amqtt (or use "
                              "backend='mosquitto')") from exc
        # amqtt logs every refused MQTT 5 probe and packet at INFO/WARNING: keep it quiet.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        logging.getLogger("transitions").setLevel(logging.ERROR)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": True}},
        }
        broker = Broker(config)
        try:
            await broker.start()
        except AmqttBrokerError as exc:
            raise _in_use(self.host, self.port, exc.__cause__ or exc) from exc
        self._amqtt = broker

    async def _start_mosquitto(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (e.g. apt install mosquitto); or "
                              "pip install amqtt for the in-process broker")
        self._tmp = tempfile.TemporaryDirectory(prefix="harken-mosquitto-")
        conf = Path(self._tmp.name) / "mosquitto.conf"
        conf.write_text(f"listener {self.port} {self.host}\nallow_anonymous true\n"
                        "persistence false\nlog_dest stderr\nlog_type error\n"
                        "log_type warning\nlog_type notice\nlog_type information\n",
                        encoding="utf-8")
        process = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        self._process = process
        try:
            await asyncio.wait_for(_wait_running(process), MOSQUITTO_START_TIMEOUT_S)
        except TimeoutError as exc:
            raise BrokerError(f"mosquitto did not start within {MOSQUITTO_START_TIMEOUT_S} s"
                              ) from exc
        except BrokerError as exc:
            raise _in_use(self.host, self.port, exc) from exc
        if process.stdout is not None:
            # Keep reading its log so a full pipe never blocks the broker; ends at its exit.
            self._stack = contextlib.AsyncExitStack()
            tg = await self._stack.enter_async_context(asyncio.TaskGroup())
            tg.create_task(_drain(process.stdout), name="mosquitto-log")


async def _wait_running(process: asyncio.subprocess.Process) -> None:
    lines: list[str] = []
    while process.stdout is not None:
        raw = await process.stdout.readline()
        if not raw:
            raise BrokerError("; ".join(lines[-3:]) or "mosquitto exited")
        line = raw.decode(errors="replace").strip()
        lines.append(line)
        if " running" in line:
            return


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await stream.readline():
            pass
