"""A hostile MQTT client that publishes QoS 0 messages as fast as the broker takes them.

    with Flooder(port, [("homeassistant/status", b"online"), ...]) as flood:
        ...                       # runs in its own process until the block ends
    flood.sent                    # messages written to the socket

It speaks just enough MQTT 3.1.1 by hand (CONNECT, then PUBLISH packets written in large
batches) to be faster than any library client: what a misbehaving device or an attacker on a
shared broker can do. With `rate_hz` it is a well-behaved satellite instead, paced in real
time. Run as a script it publishes until killed:
`python tests/mqtt_flooder.py PORT RATE_HZ TOPIC=HEX_PAYLOAD ...` (rate 0: flood).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

BATCH = 200  # messages per socket write
START_TIMEOUT_S = 10.0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def connect_packet(client_id: str, keepalive_s: int = 60) -> bytes:
    body = _string(b"MQTT") + bytes([4, 0x02]) + keepalive_s.to_bytes(2, "big") + \
        _string(client_id.encode())
    return bytes([0x10]) + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = _string(topic.encode()) + payload
    return bytes([0x30]) + _varint(len(body)) + body


def flood(port: int, messages: list[tuple[str, bytes]], rate_hz: float = 0.0) -> None:
    """Publishes `messages` round and round; at `rate_hz` messages a second (a satellite
    streaming in real time) or, with 0, as fast as the broker takes them."""
    batch = b"".join(publish_packet(*messages[i % len(messages)]) for i in range(BATCH))
    paced = [publish_packet(*m) for m in messages]
    with socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT_S) as sock:
        sock.sendall(connect_packet(f"flooder-{port}-{time.monotonic_ns()}"))
        connack = sock.recv(4)
        if len(connack) != 4 or connack[0] != 0x20 or connack[3] != 0:
            raise SystemExit(f"the broker refused the flooder: {connack!r}")
        print("flooding", flush=True)
        sent = 0
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            start = time.monotonic()
            while not rate_hz:
                sock.sendall(batch)
                sent += BATCH
            while True:
                sock.sendall(paced[sent % len(paced)])
                sent += 1
                time.sleep(max(0.0, start + sent / rate_hz - time.monotonic()))
        finally:
            print(f"sent {sent}", flush=True)


class Flooder:
    """The flood in a child process (its own interpreter: it never shares our CPU time
    through the GIL, as a device on the network would not)."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], *,
                 rate_hz: float = 0.0) -> None:
        self.port = port
        self.messages = messages
        self.rate_hz = rate_hz
        self.sent = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        args = [f"{topic}={payload.hex()}" for topic, payload in self.messages]
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__)), str(self.port), str(self.rate_hz), *args],
            stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()  # blocks until it floods (or fails)
        if line.strip() != "flooding":
            self._process.kill()
            raise RuntimeError(f"the flooder did not start: {line!r}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            out, _ = process.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        for line in out.splitlines():
            if line.startswith("sent "):
                with contextlib.suppress(ValueError):
                    self.sent = int(line.split()[1])


if __name__ == "__main__":
    pairs = [arg.split("=", 1) for arg in sys.argv[3:]]
    flood(int(sys.argv[1]), [(topic, bytes.fromhex(hexed)) for topic, hexed in pairs],
          rate_hz=float(sys.argv[2]))
