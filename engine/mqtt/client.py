"""MQTT connections shared by the sink and the satellite source.

`MqttSettings` says where and how to connect (URL, TLS, credentials); `open_client` makes
one connection, trying MQTT 5 first and falling back to 3.1.1 when the broker refuses it;
`Backoff` spaces out reconnects (exponential, with jitter). Errors a user can fix (bad
password, untrusted server certificate, missing CA file) raise MqttConfigError and are not
retried; a broker that is down or unreachable raises aiomqtt.MqttError and is retried.

The password is kept out of `repr()` and out of every message.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from harken.engine.mqtt.guard import RateLimitFilter
from harken.engine.mqtt.inbox import Inbox
from harken.models.errors import MqttConfigError

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
DEFAULT_KEEPALIVE_S = 30
DEFAULT_CONNECT_TIMEOUT_S = 10.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_QUEUED_INCOMING = 1000  # messages received but not yet read (beyond: dropped by aiomqtt)

#: The MQTT library's logger for our clients: one warning per discarded message under a
#: flood would flood the log, so each of its messages gets through a few times a minute.
LIBRARY_LOG = logging.getLogger("harken.engine.mqtt.library")
LIBRARY_LOG_FILTER = RateLimitFilter()
LIBRARY_LOG.addFilter(LIBRARY_LOG_FILTER)

Protocol = Literal["auto", "5", "3.1.1"]

# CONNACK codes: 3.1.1 (1 = unacceptable protocol version) and 5 (0x84 = unsupported).
_BAD_PROTOCOL = {1, 0x84}
# 3.1.1: 4 bad user name or password, 5 not authorised; 5: 0x86, 0x87, 0x8C (bad auth method).
_AUTH_REFUSED = {4, 5, 0x86, 0x87, 0x8C}


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsOptions:
    ca_file: Path | None = None  # None: the system's trusted CAs
    cert_file: Path | None = None  # client certificate, for brokers that require one
    key_file: Path | None = None
    insecure: bool = False  # skip server certificate and host name checks (testing only)


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None
    keepalive_s: int = DEFAULT_KEEPALIVE_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    protocol: Protocol = "auto"

    @property
    def address(self) -> str:
        """`mqtt[s]://[user@]host:port`, never with the password."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttUrl:
    """`mqtt://[user@]host[:port][/topic/filter]` (or mqtts://) taken apart."""

    host: str
    port: int
    tls: bool
    username: str | None
    path: str  # topic filter after the host, without the leading '/'; may be empty


def parse_url(url: str) -> MqttUrl:
    """Parses an MQTT URL; the path is kept verbatim so `+` and `#` filters survive."""
    # allow_fragments=False: '#' is an MQTT wildcard here, not a URL fragment.
    parts = urllib.parse.urlsplit(url, allow_fragments=False)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise MqttConfigError(f"MQTT URL {url!r} must start with mqtt:// or mqtts:// "
                              "(e.g. mqtt://user@broker.local:1883)")
    if parts.password is not None:
        raise MqttConfigError("do not put the MQTT password in the URL (it would show in "
                              "process lists and shell history); set HARKEN_MQTT_PASSWORD, "
                              "mqtt.password in the config file, or --mqtt-password-file")
    if not parts.hostname:
        raise MqttConfigError(f"MQTT URL {url!r} has no host; use e.g. mqtt://localhost")
    try:
        port = parts.port
    except ValueError as exc:
        raise MqttConfigError(f"MQTT URL {url!r} has a bad port; use 1-65535") from exc
    tls = parts.scheme == "mqtts"
    username = urllib.parse.unquote(parts.username) if parts.username else None
    return MqttUrl(host=parts.hostname, port=port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
                   tls=tls, username=username, path=parts.path.lstrip("/"))


def tls_context(tls: TlsOptions) -> ssl.SSLContext:
    """A client TLS context; verifies the server against `ca_file` (or the system CAs)."""
    for label, path in (("CA file", tls.ca_file), ("client certificate", tls.cert_file),
                        ("client key", tls.key_file)):
        if path is not None and not path.is_file():
            raise MqttConfigError(f"MQTT TLS {label} {path} does not exist; fix the path "
                                  "(--mqtt-ca / --mqtt-cert / --mqtt-key or the mqtt section "
                                  "of the config file)")
    if tls.key_file is not None and tls.cert_file is None:
        raise MqttConfigError("an MQTT client key needs its certificate: set --mqtt-cert too")
    try:
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls.ca_file is not None else None)
        if tls.cert_file is not None:
            context.load_cert_chain(str(tls.cert_file),
                                    str(tls.key_file) if tls.key_file is not None else None)
    except ssl.SSLError as exc:
        raise MqttConfigError(f"cannot load the MQTT TLS files: {exc.reason or exc}; check "
                              "that they are PEM certificates/keys that belong together") \
            from exc
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _code(exc: aiomqtt.MqttError) -> int | None:
    rc = getattr(exc, "rc", None)
    if isinstance(rc, ReasonCode):
        return int(rc.value)
    return rc if isinstance(rc, int) else None


def _fatal(settings: MqttSettings, exc: aiomqtt.MqttError) -> MqttConfigError | None:
    """The user-fixable reason a connect failed, or None if it may work on a retry."""
    text = str(exc)
    if isinstance(exc, MqttConnectError) and _code(exc) in _AUTH_REFUSED:
        who = f"user {settings.username!r}" if settings.username else "no user name"
        return MqttConfigError(
            f"the MQTT broker at {settings.address} refused the login ({who}): {text}. Check "
            "the user in the URL and the password (HARKEN_MQTT_PASSWORD, mqtt.password or "
            "--mqtt-password-file)")
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return MqttConfigError(
            f"the MQTT broker at {settings.address} has a certificate this machine does not "
            f"trust ({text}); pass the CA that signed it with --mqtt-ca FILE")
    if "alert" in text.lower() and "certificate" in text.lower():
        return MqttConfigError(
            f"the MQTT broker at {settings.address} rejected the TLS client certificate "
            f"({text}); pass a certificate it trusts with --mqtt-cert/--mqtt-key")
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _client(settings: MqttSettings, *, client_id: str, will: Will | None,
            version: aiomqtt.ProtocolVersion, context: ssl.SSLContext | None,
            inbox: Inbox | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        settings.host, settings.port, username=settings.username,
        password=settings.password, identifier=client_id, protocol=version,
        will=aiomqtt.Will(will.topic, will.payload, will.qos, will.retain) if will else None,
        keepalive=settings.keepalive_s, timeout=settings.connect_timeout_s,
        tls_context=context, logger=LIBRARY_LOG,
        # With an inbox, incoming messages go to Harken's own bounded, fair, counted queue;
        # without one (publish-only clients) the library's single FIFO is bounded anyway.
        queue_type=inbox.queue_type() if inbox is not None else None,
        max_queued_incoming_messages=MAX_QUEUED_INCOMING,
    )


@asynccontextmanager
async def open_client(settings: MqttSettings, *, client_id: str, will: Will | None = None,
                      inbox: Inbox | None = None) -> AsyncIterator[aiomqtt.Client]:
    """One connected client (MQTT 5, else 3.1.1); disconnects cleanly on exit.

    With `inbox`, the messages it receives are filed there (engine/mqtt/inbox.py).

    Raises MqttConfigError for what a retry cannot fix, aiomqtt.MqttError otherwise.
    """
    context = tls_context(settings.tls) if settings.tls is not None else None
    versions = {"5": [aiomqtt.ProtocolVersion.V5],
                "3.1.1": [aiomqtt.ProtocolVersion.V311],
                "auto": [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311]}
    candidates = versions[settings.protocol]
    for i, version in enumerate(candidates):
        client = _client(settings, client_id=client_id, will=will, version=version,
                         context=context, inbox=inbox)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            fatal = _fatal(settings, exc)
            if fatal is not None:
                raise fatal from exc
            last = i == len(candidates) - 1
            if not last and isinstance(exc, MqttConnectError) and \
                    _code(exc) in _BAD_PROTOCOL:
                continue
            raise
        try:
            yield client
        finally:
            # A connection that is already gone has nothing left to close.
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        return


class Backoff:
    """Delays between reconnects: doubling from `initial_s` up to `max_s`, with jitter.

    Each delay is drawn uniformly from [d/2, d] ("equal jitter"), so many clients that lost
    the same broker do not reconnect in lockstep, yet none waits less than half the step.
    """

    def __init__(self, *, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S,
                 rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng if rng is not None else random.Random()

    def next_delay(self) -> float:
        step = min(self.max_s, self.initial_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return step / 2 + self._rng.uniform(0.0, step / 2)

    def reset(self) -> None:
        self.attempt = 0
