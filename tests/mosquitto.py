"""A real mosquitto broker for tests: free loopback ports, temp config, TLS with a test CA.

    pki = make_pki(tmp_path)                       # CA, server and client certs (openssl)
    with Mosquitto(tmp_path / "broker", tls=pki) as broker:
        broker.port, broker.tls_port               # 127.0.0.1 only
        broker.restart()                           # same ports; persistence keeps sessions

Readiness is awaited by reading mosquitto's own "running" log line (no polling, no sleeps).
Everything has a timeout so a broken broker fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
OPENSSL_TIMEOUT_S = 30.0
WAIT_S = 10.0  # s: the longest any test waits for one expected message


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


MOSQUITTO = mosquitto_binary()
SKIP_REASON = ("mosquitto is not installed (apt install mosquitto); the MQTT broker tests "
               "need a real broker")


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Pki:
    """A throw-away certificate authority and the certificates it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: verification against it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, timeout=OPENSSL_TIMEOUT_S,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN=Harken test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    extfile = folder / f"{name}.ext"
    extfile.write_text(ext, encoding="utf-8")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extfile),
             cwd=folder)
    return cert, key


def make_pki(folder: Path) -> Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    server = _leaf(folder, "server", ca, "basicConstraints=CA:FALSE\n"
                   "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    client = _leaf(folder, "client", ca, "basicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=clientAuth\n")
    other, _ = _ca(folder, "other-ca")
    return Pki(ca_cert=ca[0], server_cert=server[0], server_key=server[1],
               client_cert=client[0], client_key=client[1], other_ca_cert=other)


def password_file(folder: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (hashed with mosquitto_passwd)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise FileNotFoundError("mosquitto_passwd is not installed")
    path = folder / "passwords"
    path.write_text("", encoding="utf-8")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True,
                       timeout=OPENSSL_TIMEOUT_S, capture_output=True)
    return path


class Mosquitto:
    """One mosquitto process on loopback ports chosen at construction (kept on restart)."""

    def __init__(self, folder: Path, *, tls: Pki | None = None, require_client_cert: bool = False,
                 passwords: Path | None = None, persistence: bool = False) -> None:
        if MOSQUITTO is None:
            raise FileNotFoundError(SKIP_REASON)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        self.log: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._running = threading.Event()
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {'false' if passwords else 'true'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {folder}/",
            "log_dest stderr",  # unbuffered, unlike stdout to a pipe
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.port} {HOST}",
        ]
        if passwords is not None:
            lines.append(f"password_file {passwords}")
        if tls is not None:
            lines += [f"listener {self.tls_port} {HOST}", f"cafile {tls.ca_cert}",
                      f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                      f"require_certificate {'true' if require_client_cert else 'false'}"]
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(line for line in lines if line) + "\n",
                               encoding="utf-8")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError("mosquitto is already running")
        self._running.clear()
        process = subprocess.Popen([str(MOSQUITTO), "-c", str(self.config)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._process = process
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()
        if not self._running.wait(START_TIMEOUT_S) or process.poll() is not None:
            self.kill()
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(self.log[-20:]))

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        # Reads the whole log so the pipe never fills; flags the "running" line.
        if process.stdout is None:
            return
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if " running" in line:
                self._running.set()

    def _wait(self, process: subprocess.Popen[bytes]) -> None:
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (persistence, if on, is written)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            self._wait(process)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            self._wait(process)

    def restart(self) -> None:
        self.stop()
        self.start()


# ------------------------------------------------------------------- test subscriber


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        return json.loads(self.payload)


class Listener:
    """An aiomqtt subscriber that records every message and lets a test await them.

    MQTT 3.1.1 (every broker here speaks it). `persistent=True` connects with
    clean_session=False under a fixed client id, so the broker queues QoS 1 messages while
    the listener is away (and across a broker restart when the broker persists).
    """

    def __init__(self, port: int, topics: list[str], *, client_id: str | None = None,
                 persistent: bool = False, tls: ssl.SSLContext | None = None) -> None:
        self._client = aiomqtt.Client(
            HOST, port, identifier=client_id, clean_session=False if persistent else None,
            protocol=aiomqtt.ProtocolVersion.V311, tls_context=tls, timeout=WAIT_S)
        self._topics = topics
        self.messages: list[Received] = []
        self._changed = asyncio.Condition()
        self._stack: contextlib.AsyncExitStack | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def client(self) -> aiomqtt.Client:
        return self._client

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self._client)
        tg = await stack.enter_async_context(asyncio.TaskGroup())
        self._stack = stack
        self._reader = tg.create_task(self._read(), name="listener")
        for topic in self._topics:
            await self._client.subscribe(topic, qos=1)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect cleanly (idempotent); the recorded messages stay readable."""
        if self._reader is not None:
            self._reader.cancel()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _read(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the broker went away: stop recording
            async for message in self._client.messages:
                raw = message.payload
                payload = bytes(raw) if isinstance(raw, (bytes, bytearray)) else \
                    str(raw).encode()
                async with self._changed:
                    self.messages.append(Received(topic=message.topic.value, payload=payload,
                                                  retain=bool(message.retain),
                                                  qos=int(message.qos)))
                    self._changed.notify_all()

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if aiomqtt.Topic(m.topic).matches(topic)]

    async def expect(self, topic: str, count: int = 1, *,
                     where: Callable[[Received], bool] | None = None) -> list[Received]:
        """Waits (at most WAIT_S) until `count` messages on `topic` (matching `where`)
        arrived; returns them."""
        def found() -> list[Received]:
            return [m for m in self.on(topic) if where is None or where(m)]

        async with asyncio.timeout(WAIT_S):
            async with self._changed:
                await self._changed.wait_for(lambda: len(found()) >= count)
        return found()
