"""MQTT wiring for `harken run`: settings from the configuration, the sink, the satellite
source and the embedded broker. Everything is validated when MqttSetup is built, so a bad
URL, password file or certificate path fails before any model loads.

Password precedence: mqtt.password_file, then HARKEN_MQTT_PASSWORD, then mqtt.password in
the config file. It goes to the client only; it is never printed or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Self

from harken.app.config import HarkenConfig, MqttConfig
from harken.app.tasks.refine import with_refine_resolved
from harken.engine.mqtt.broker import NOT_INSTALLED, EmbeddedBroker, mosquitto_binary
from harken.engine.mqtt.client import MqttSettings, TlsOptions, parse_url
from harken.engine.mqtt.satellites import SatelliteSource, SiteLimits
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.mqtt.topics import (
    HERMES_AUDIO_FILTER,
    SiteNames,
    TopicError,
    check_filter,
    default_site,
    satellite_id,
)
from harken.engine.pipeline import OpenableSource
from harken.models.errors import BrokerError, ConfigError, MqttConfigError

log = logging.getLogger(__name__)

PASSWORD_ENV = "HARKEN_MQTT_PASSWORD"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
EMBEDDED = "embedded"
BROKER_START_TIMEOUT_S = 15.0
BROKER_STOP_TIMEOUT_S = 10.0


def is_mqtt_url(text: str) -> bool:
    return text.startswith(("mqtt://", "mqtts://"))


def resolve_password(mqtt: MqttConfig) -> str | None:
    if mqtt.password_file is not None:
        try:
            text = mqtt.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the MQTT password file {mqtt.password_file}: "
                              f"{exc.strerror or exc}; fix mqtt.password_file "
                              "(--mqtt-password-file)") from exc
        lines = text.splitlines()
        password = lines[0].strip() if lines else ""
        if not password:
            raise ConfigError(f"the MQTT password file {mqtt.password_file} is empty; put the "
                              "password on its first line")
        return password
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    return mqtt.password.get_secret_value() if mqtt.password is not None else None


def settings_from_url(url: str, mqtt: MqttConfig) -> tuple[MqttSettings, str]:
    """(connection settings, topic filter from the URL path) for an mqtt[s]:// URL."""
    try:
        parsed = parse_url(url)
    except MqttConfigError as exc:
        raise ConfigError(str(exc)) from exc
    if not parsed.tls and (mqtt.ca_file or mqtt.cert_file or mqtt.key_file):
        raise ConfigError(f"TLS files are set but {url!r} is not a TLS URL; use "
                          "mqtts://host[:8883] or drop --mqtt-ca/--mqtt-cert/--mqtt-key")
    password = resolve_password(mqtt)
    if password is not None and not parsed.username:
        raise ConfigError("an MQTT password is set but the URL names no user; use "
                          "mqtt://USER@host (or unset HARKEN_MQTT_PASSWORD/mqtt.password)")
    tls = TlsOptions(ca_file=mqtt.ca_file, cert_file=mqtt.cert_file, key_file=mqtt.key_file,
                     insecure=mqtt.tls_insecure) if parsed.tls else None
    return MqttSettings(host=parsed.host, port=parsed.port, username=parsed.username,
                        password=password, tls=tls, keepalive_s=mqtt.keepalive_s), parsed.path


def security_warnings(settings: MqttSettings, mqtt: MqttConfig) -> list[str]:
    """What a user should know about settings that expose the connection (docs/mqtt.md):
    a skipped certificate check, a password sent in clear text to another machine."""
    out = []
    if settings.tls is not None and settings.tls.insecure:
        out.append(f"mqtt.tls_insecure is set: the certificate of {settings.address} is not "
                   "checked, so anyone on the network path can pose as the broker and read "
                   "the password and every result; pass its CA with --mqtt-ca instead")
    if settings.password is not None and settings.tls is None and \
            settings.host not in LOOPBACK_HOSTS and not mqtt.allow_plaintext_password:
        out.append(f"the MQTT password goes to {settings.address} unencrypted (mqtt://): "
                   "anyone on the network path can read it. Use mqtts:// (TLS), or set "
                   "mqtt.allow_plaintext_password = true to accept this")
    return out


def _version() -> str:
    try:
        return importlib.metadata.version("harken")
    except importlib.metadata.PackageNotFoundError:
        return ""


class BrokerThread:
    """The embedded broker on its own event loop in a thread.

    It then serves whichever loop runs the engine (the terminal app's or asyncio.run's),
    starts before the session and stops after it. The thread owns the broker through
    `async with`; stopping sets an event on that loop.
    """

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="mqtt-broker", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # not swallowed: __enter__ re-raises it in the caller
            self._error = exc
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.broker:
            self._started.set()
            await self._stop.wait()

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._started.wait(BROKER_START_TIMEOUT_S):
            raise BrokerError(f"the embedded MQTT broker did not start within "
                              f"{BROKER_START_TIMEOUT_S} s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # its loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(BROKER_STOP_TIMEOUT_S)


class MqttSetup:
    """What `harken run` needs for MQTT, from the configuration and the --input URL."""

    def __init__(self, config: HarkenConfig, *, input_url: str | None = None,
                 live: bool = True) -> None:
        """`live`: a final waits for its refinement at most refine.max_wait_s before it
        settles on `caption/settled` and Hermes (files and --fast: until it comes)."""
        mqtt = config.mqtt
        self.config = config
        self.site = mqtt.site or default_site()
        self.embedded: EmbeddedBroker | None = None
        self.results: MqttSettings | None = None
        self.input: MqttSettings | None = None
        self.topic_filter = HERMES_AUDIO_FILTER
        # The names satellites publish under, by site id: the source records them, the sink
        # echoes them as Hermes siteId.
        self.site_names = SiteNames()
        for name in mqtt.allowed_sites:
            self.site_names.record(satellite_id(name), name)
        if mqtt.url == EMBEDDED:
            if mosquitto_binary() is None:
                raise ConfigError(NOT_INSTALLED)
            self.embedded = EmbeddedBroker(host=mqtt.embedded_host, port=mqtt.embedded_port)
            self.results = self.embedded.settings
        elif mqtt.url:
            self.results, _ = settings_from_url(mqtt.url, mqtt)
        if input_url is not None:
            self.input, path = settings_from_url(input_url, mqtt)
            try:
                self.topic_filter = check_filter(path or HERMES_AUDIO_FILTER)
            except TopicError as exc:
                raise ConfigError(str(exc)) from exc
            if self.results is None:  # results go back to the satellites' broker
                self.results = self.input
        try:
            self.sink_options = MqttSinkOptions(
                prefix=mqtt.prefix, site=self.site, sites_from_streams=input_url is not None,
                hermes=mqtt.hermes, refined=bool(with_refine_resolved(config).refine.model),
                refine_wait_s=config.refine.max_wait_s if live else None,
                ha_discovery=mqtt.ha_discovery, ha_prefix=mqtt.ha_prefix,
                speakers=config.speakers.enabled,
                outbox_size=mqtt.outbox_size, partial_interval_s=mqtt.partial_interval_s,
                # Entities for the configured keywords exist before the first is spotted.
                keywords=tuple(config.keywords.words) if config.keywords.enabled else (),
                # As the stream ids their frames get ("Living Room" streams as
                # Living_Room-<hash>), so the entities read the topics results go to.
                sites=tuple(satellite_id(name) for name in mqtt.allowed_sites)
                if input_url is not None else (),
                forget_evicted_sites=mqtt.forget_evicted_sites,
                version=_version())
            self.limits = SiteLimits(max_sites=mqtt.max_sites,
                                     allow=frozenset(mqtt.allowed_sites),
                                     idle_evict_s=mqtt.idle_evict_s,
                                     max_frames_per_s=mqtt.max_frames_per_s,
                                     max_bytes_per_s=mqtt.max_bytes_per_s,
                                     max_audio_ratio=mqtt.max_audio_ratio)
        except ValueError as exc:
            raise ConfigError(f"bad MQTT settings: {exc}") from exc
        self.warnings = [w for s in (self.results, self.input) if s is not None
                         for w in security_warnings(s, mqtt)]
        for warning in dict.fromkeys(self.warnings):  # once each, results and input alike
            log.warning("warning: %s", warning)

    @property
    def enabled(self) -> bool:
        return self.results is not None

    def sinks(self) -> list[MqttSink]:
        """The MQTT sink (bound to the engine by the session), or none without MQTT."""
        if self.results is None:
            return []
        return [MqttSink(settings=self.results, options=self.sink_options,
                         site_names=self.site_names)]

    def source(self, *, on_subscribed: Callable[[], None] | None = None) -> OpenableSource:
        """The satellite source (a SatelliteSource) for --input mqtt://...; `on_subscribed`:
        called once when it hears frames (SatelliteSource)."""
        if self.input is None:
            raise ConfigError("no MQTT input: use --input mqtt://host/hermes/audioServer/+/"
                              "audioFrame")
        return SatelliteSource(settings=self.input, client_id=f"harken-{self.site}-audio",
                               topic_filter=self.topic_filter,
                               block_s=self.config.audio.block_s, limits=self.limits,
                               own_subscriptions=self.config.mqtt.own_subscriptions,
                               names=self.site_names, on_subscribed=on_subscribed)

    @contextlib.contextmanager
    def broker(self) -> Iterator[None]:
        """Runs the embedded broker around the session (nothing without `--mqtt embedded`)."""
        if self.embedded is None:
            yield
            return
        with BrokerThread(self.embedded):
            yield

