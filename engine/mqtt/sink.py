"""The MQTT sink: engine events to MQTT topics, surviving broker outages.

    sink = MqttSink(settings=MqttSettings(host="localhost"), options=MqttSinkOptions(site="den"),
                    control=engine)
    await sink.consume(engine.subscribe(sink.name))

How it never stalls the engine: `consume` only routes events into an in-memory outbox and
returns to its subscription at once; one connection task owns the results connection. That
task connects (MQTT 5, else 3.1.1), publishes `online` (retained; `offline` is the last
will), then sends the outbox head-first, one QoS 1 message at a time, removing a message
only once the broker acknowledged it. It subscribes to nothing: the control topic and Home
Assistant's status are read on connections of their own (`_listen`), through a bounded
fair queue (engine/mqtt/inbox.py), so a flood there cannot delay its acknowledgements.
When the connection drops, the unacknowledged message stays at the head and is sent again
after reconnecting (exponential backoff with jitter): finals arrive in order, at least once
(a message whose PUBACK was lost is delivered twice; nothing is lost unless the outbox
overflows).

Refinement (docs/refine.md): with `refined` on, each caption final is also held here until
its `caption_refined` arrives, at most `refine_wait_s` (None: until it comes), and then
published once as the caption that stands on `<prefix>/<site>/caption/settled` (the final
with the refined text and words, or its own CTC text when the refinement was rejected or
came too late: counted in `settled_fallbacks`). Hermes `textCaptured` and the Home
Assistant "Last caption" sensor read that text. Only these two wait: the Harken topics of
every event go out as they come, so `caption/final` still precedes its annotations.

Bounds: the outbox holds `outbox_size` messages; beyond that the oldest is dropped and
counted (`outbox_dropped`). QoS 0 messages (partials, stats, levels) are never kept for
later: dropped and counted (`qos0_dropped`) while disconnected or behind a backlog.
Sites (satellites) are kept in a table of at most MAX_KNOWN_SITES; a site that leaves it, or
whose stream its source ended (`stream_ended`, an idle satellite) when it is not named in
advance, is forgotten: its retained discovery configs and state topics are cleared with
empty retained payloads (counted in `sites_forgotten`, `retained_cleared`), so made-up
site names leave nothing on the broker. Home Assistant ids never collide (topics.ha_site_id);
Hermes `siteId` is the name the satellite used (topics.SiteNames).
Counters are plain attributes so the stats topic, the TUI or a test can read them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from harken.engine.events import SCHEMA_VERSION, Event, StreamEnded
from harken.engine.mqtt.client import (
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    Backoff,
    MqttSettings,
    Will,
    open_client,
)
from harken.engine.mqtt.control import (
    apply,
    command_name,
    error_payload,
    parse_command,
)
from harken.engine.mqtt.guard import Rejections, TokenBucket
from harken.engine.mqtt.inbox import OTHER, Inbox
from harken.engine.mqtt.topics import (
    DEFAULT_HA_PREFIX,
    DEFAULT_PREFIX,
    HERMES_TEXT_CAPTURED,
    KEYWORD_FIELDS,
    QOS_AT_LEAST_ONCE,
    QOS_AT_MOST_ONCE,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    SiteNames,
    SiteTopics,
    check_prefix,
    default_site,
    dumps,
    event_payload,
    first_field,
    ha_discovery,
    ha_keyword_discovery,
    ha_speaker_config_topic,
    hermes_hotword_detected,
    hermes_hotword_topic,
    hermes_text_captured,
    routes,
    sanitize_level,
)
from harken.engine.pipeline import Pausable
from harken.models.errors import ControlError, MqttConfigError

log = logging.getLogger(__name__)

DEFAULT_OUTBOX_SIZE = 1000  # messages waiting for the broker
PARTIAL_INTERVAL_S = 0.25  # s: at most one partial per stream this often
QOS0_MAX_BACKLOG = 16  # messages: a QoS 0 message behind more than this is stale, dropped
DRAIN_TIMEOUT_S = 5.0  # s: at the end of a run, how long to try delivering what is left
PUBLISH_TIMEOUT_S = 10.0  # s: a PUBACK slower than this counts as a lost connection
OFFLINE_ON_CANCEL_S = 1.0  # s: on Ctrl-C, time allowed to publish `offline`
MAX_KNOWN_SITES = 256  # sites (and streams) whose routing state is kept; least recent go
MAX_SETTLING = 64  # finals waiting for their refinement; beyond, the oldest keeps its CTC text
HA_ANNOUNCE_INTERVAL_S = 10.0  # s: at most one re-announcement per `<ha>/status online`
ERROR_REPLIES_PER_S = 2.0  # answers on `<prefix>/<site>/error`; beyond, only counted
ERROR_REPLY_BURST = 10  # answers that may go out at once
INBOX_MESSAGES = 64  # per family (control, HA status, other) waiting to be handled
INBOX_BYTES = 1024 * 1024  # per family; a command is at most 4 kB


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSinkOptions:
    prefix: str = DEFAULT_PREFIX
    site: str = field(default_factory=default_site)
    #: Satellite input: each stream id is a site, with its own result topics.
    sites_from_streams: bool = False
    hermes: bool = False
    #: Refinement is on: each final waits for its caption_refined (the refine stage emits
    #: one per final), at most `refine_wait_s` (None: until it comes, for files and
    #: --fast), then goes to `caption/settled` and Hermes textCaptured with the text that
    #: stands; the Home Assistant caption sensor reads `caption/settled`.
    refined: bool = False
    refine_wait_s: float | None = 3.0
    ha_discovery: bool = False
    ha_prefix: str = DEFAULT_HA_PREFIX
    keywords: tuple[str, ...] = ()  # keyword entities announced before any is spotted
    #: Diarization runs in this session: the current-speaker entity is announced. Off, its
    #: config is cleared instead, so one left by an earlier `--diarize` run goes away.
    speakers: bool = True
    #: Satellite sites known in advance (mqtt.allowed_sites, as site ids): announced at
    #: start and never forgotten. Other satellite sites are announced on their first
    #: caption, so noise published under a made-up site name leaves no retained configs
    #: behind.
    sites: tuple[str, ...] = ()
    #: A satellite site not in `sites` whose stream its source ended (idle eviction) is
    #: forgotten: its retained discovery configs and state are cleared, so made-up names
    #: that produced a caption leave nothing on the broker. It is announced again on its
    #: next caption. Off: kept until more than MAX_KNOWN_SITES sites were seen.
    forget_evicted_sites: bool = True
    outbox_size: int = DEFAULT_OUTBOX_SIZE
    partial_interval_s: float = PARTIAL_INTERVAL_S
    levels: bool = False
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    ha_announce_interval_s: float = HA_ANNOUNCE_INTERVAL_S
    publish_timeout_s: float = PUBLISH_TIMEOUT_S
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S
    version: str = ""  # software version shown in Home Assistant

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        check_prefix(self.ha_prefix)
        if sanitize_level(self.site, fallback="") != self.site:
            raise ValueError(f"site id {self.site!r} cannot be an MQTT topic level; use "
                             f"e.g. {sanitize_level(self.site, fallback='harken')!r}")
        if self.outbox_size < 1:
            raise ValueError(f"outbox_size must be >= 1, got {self.outbox_size}")
        if self.refine_wait_s is not None and not self.refine_wait_s >= 0:
            raise ValueError(f"refine_wait_s must be >= 0 or None, got {self.refine_wait_s}")
        if self.partial_interval_s < 0 or self.drain_timeout_s < 0 or \
                self.ha_announce_interval_s < 0:
            raise ValueError("partial_interval_s, drain_timeout_s and ha_announce_interval_s "
                             "must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass(slots=True, kw_only=True)
class _SiteState:
    """What the sink published for one site that it may have to take back."""

    keywords: set[str]  # announced with the site (or when first spotted)
    retained: set[str] = field(default_factory=set)  # retained state topics (speaker/current)


@dataclass(slots=True, kw_only=True)
class _Settling:
    """A caption final waiting for its refinement."""

    site: str
    final: dict[str, Any]  # the final's payload
    timer: asyncio.TimerHandle | None


class MqttSink:
    """Publishes engine events to MQTT; see the module docstring for the delivery rules."""

    def __init__(self, *, settings: MqttSettings, options: MqttSinkOptions,
                 control: Pausable | None = None, name: str = "mqtt",
                 rng: random.Random | None = None,
                 site_names: SiteNames | None = None) -> None:
        """`site_names`: the names satellites used, by site id (SatelliteSource records
        them), echoed as Hermes `siteId`; without it the site id is."""
        self.name = name
        self.settings = settings
        self.options = options
        self.topics = SiteTopics(prefix=options.prefix, site=options.site)
        self.client_id = f"harken-{options.site}"
        self._control = control
        self._rng = rng
        # Counters (cumulative).
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.published = 0
        self.outbox_dropped = 0
        self.qos0_dropped = 0
        self.partials_rate_limited = 0
        self.commands_applied = 0
        self.commands_rejected = 0
        self.error_replies_dropped = 0
        self.ha_announcements = 0
        self.ha_status_coalesced = 0
        self.retained_coalesced = 0
        self.sites_forgotten = 0  # sites whose retained configs and state were cleared
        self.retained_cleared = 0  # retained topics cleared for them (empty payloads)
        self._site_names = site_names
        self.rejections = Rejections(logger=log, what="MQTT message")
        # What we subscribe to (control, HA status) is filed by topic into bounded queues
        # served in turn: a flood of `<ha>/status` never drops or delays a command.
        self.inbox = Inbox(classify=self._family, max_messages=INBOX_MESSAGES,
                           max_bytes=INBOX_BYTES, kinds=("control", "ha_status", OTHER))
        self.undelivered = 0
        self.settled_refined = 0  # finals settled with their accepted refinement
        self.settled_fallbacks = 0  # with the CTC text: rejected, too late, or overflow
        self.last_error: str | None = None
        # (stream, segment) -> final waiting for its refinement; at most MAX_SETTLING.
        self._settling: collections.OrderedDict[tuple[str, int], _Settling] = \
            collections.OrderedDict()
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._inflight: _Outgoing | None = None
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        # Subscriptions, each on a connection of its own (`_listen`): name -> topics.
        self._subscriptions: dict[str, list[str]] = {"control": [self.topics.control]}
        if options.ha_discovery:
            self._subscriptions["ha"] = [f"{options.ha_prefix}/status"]
        self._listening = {name: asyncio.Event() for name in self._subscriptions}
        self._closing = False
        self._closed = asyncio.Event()
        self._outage_logged = False
        self._deadline = 0.0
        # Bounded by MAX_KNOWN_SITES (least recently seen forgotten, their retained
        # messages cleared), plus the pinned ones.
        self._sites: collections.OrderedDict[str, _SiteState] = collections.OrderedDict()
        self._announced: set[str] = set()  # a subset of _sites' keys
        # Never forgotten: Harken's own site, and the satellites named in advance.
        self._pinned = frozenset(options.sites) | \
            (frozenset() if options.sites_from_streams else {options.site})
        self._last_partial: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._last_announce = -math.inf
        self._announce_later: asyncio.TimerHandle | None = None
        self._replies: TokenBucket | None = None
        self._last_command: dict[str, Any] | None = None
        self._state_paused: bool | None = None

    # ------------------------------------------------------------------ public

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox) + (self._inflight is not None)

    def counters(self) -> dict[str, int]:
        return {
            "connected": int(self.connected), "connects": self.connects,
            "reconnects": self.reconnects, "connect_failures": self.connect_failures,
            "published": self.published, "outbox_depth": self.outbox_depth,
            "outbox_dropped": self.outbox_dropped, "qos0_dropped": self.qos0_dropped,
            "partials_rate_limited": self.partials_rate_limited,
            "commands_applied": self.commands_applied,
            "commands_rejected": self.commands_rejected,
            "rejected_messages": self.rejections.total,
            "error_replies_dropped": self.error_replies_dropped,
            "ha_announcements": self.ha_announcements,
            "ha_status_coalesced": self.ha_status_coalesced,
            "sites_forgotten": self.sites_forgotten,
            "retained_cleared": self.retained_cleared,
            "settled_refined": self.settled_refined,
            "settled_fallbacks": self.settled_fallbacks,
            **self.inbox.counters(),
        }

    def bind(self, control: Pausable) -> None:
        """The object control commands act on: the app's session (pause/resume, keywords,
        translation), or a bare Engine (pause/resume only)."""
        self._control = control

    async def wait_connected(self, connected: bool = True) -> None:
        """Returns once the sink is connected and subscribed (or, with False, once its
        results connection is down)."""
        if not connected:
            await self._down.wait()
            return
        await self._up.wait()
        for listening in self._listening.values():
            await listening.wait()

    async def consume(self, events: AsyncIterable[Event]) -> None:
        if not self.options.sites_from_streams:
            self._add_site(self.options.site, announce=True)
        for site in self.options.sites:
            self._add_site(site, announce=True)
        async with asyncio.TaskGroup() as tg:
            link = tg.create_task(self._link(), name=f"mqtt-link-{self.options.site}")
            listeners = [tg.create_task(self._listen(name, topics), name=f"mqtt-{name}")
                         for name, topics in self._subscriptions.items()]
            # They listen as long as results can still go out.
            link.add_done_callback(lambda _: [task.cancel() for task in listeners])
            try:
                async for event in events:
                    self._route(event)
            finally:
                if self._announce_later is not None:
                    self._announce_later.cancel()
                while self._settling:  # no refinement comes any more: the CTC text stands
                    self._settle(next(iter(self._settling)), None)
                self._closing = True
                self._deadline = time.monotonic() + self.options.drain_timeout_s
                self._closed.set()
                self._wake.set()

    # ----------------------------------------------------------------- routing

    def _site_of(self, stream: str) -> str:
        if self.options.sites_from_streams:
            return sanitize_level(stream, fallback=self.options.site)
        return self.options.site

    def _add_site(self, site: str, *, announce: bool) -> _SiteState:
        """Registers a site (most recent last); returns its state."""
        known = self._sites.get(site)
        if known is None:
            known = self._sites[site] = _SiteState(keywords=set(self.options.keywords))
            if len(self._sites) > MAX_KNOWN_SITES:
                # The least recently seen goes; its retained messages too, or nothing would
                # ever clear them.
                old = next((s for s in self._sites if s not in self._pinned and s != site),
                           None)
                if old is not None:
                    self._forget(old)
        else:
            self._sites.move_to_end(site)
        if announce and site not in self._announced:
            self._announced.add(site)
            if self.options.ha_discovery and self.connected:  # else: announced on connect
                self._announce(site)
        return known

    def _forget(self, site: str) -> None:
        """Drops a site's state and clears what the broker retains for it: each discovery
        config it announced (an empty retained payload: Home Assistant removes the entity)
        and its retained state topics. At most 2 + its keywords messages, each replacing a
        queued retained message of its topic, if any."""
        known = self._sites.pop(site, None)
        if known is None:
            return
        self._last_partial.pop(site, None)
        topics = SiteTopics(prefix=self.options.prefix, site=site)
        cleared = sorted(known.retained)
        if site in self._announced:
            self._announced.discard(site)
            if self.options.ha_discovery:
                cleared += [item.topic for item in ha_discovery(
                    topics, availability=self.topics.status,
                    keywords=tuple(sorted(known.keywords)), ha_prefix=self.options.ha_prefix,
                    speakers=self.options.speakers)]
        for topic in cleared:
            self._enqueue(_Outgoing(topic=topic, payload=b"", qos=QOS_AT_LEAST_ONCE,
                                    retain=True))
        self.sites_forgotten += 1
        self.retained_cleared += len(cleared)
        if cleared:
            log.info("MQTT site %s forgotten: %d retained message(s) cleared", site,
                     len(cleared))

    def _announce_all(self) -> None:
        self._announce_later = None
        self._last_announce = time.monotonic()
        self.ha_announcements += 1
        for site in self._sites:
            if site in self._announced:
                self._announce(site)

    def _ha_online(self) -> None:
        """`<ha>/status online`: Home Assistant restarted and wants the configs again. Anyone
        may publish it, in a loop: at most one announcement per ha_announce_interval_s,
        later requests coalesced into one at the end of that interval."""
        wait = self._last_announce + self.options.ha_announce_interval_s - time.monotonic()
        if wait <= 0:
            self._announce_all()
        elif self._announce_later is None:
            self._announce_later = asyncio.get_running_loop().call_later(
                wait, self._announce_all)
        else:
            self.ha_status_coalesced += 1

    def _announce(self, site: str) -> None:
        """Queue the retained Home Assistant configs of one site."""
        topics = SiteTopics(prefix=self.options.prefix, site=site)
        for item in ha_discovery(topics, availability=self.topics.status,
                                 keywords=tuple(sorted(self._sites[site].keywords)),
                                 refined=self.options.refined,
                                 ha_prefix=self.options.ha_prefix,
                                 version=self.options.version,
                                 speakers=self.options.speakers):
            self._enqueue(_Outgoing(topic=item.topic, payload=dumps(item.config),
                                    qos=QOS_AT_LEAST_ONCE, retain=True))
        if not self.options.speakers:
            self._enqueue(_Outgoing(topic=ha_speaker_config_topic(topics, self.options.ha_prefix),
                                    payload=b"", qos=QOS_AT_LEAST_ONCE, retain=True))

    def _route(self, event: Event) -> None:
        if self._control is not None and self._state_paused is not None and \
                self._control.paused != self._state_paused:
            self._publish_state()  # paused from elsewhere (the TUI): keep `state` true
        if event.type == StreamEnded.type:
            self._stream_ended(event)
            return
        site = self._site_of(event.stream)
        known = self._add_site(site, announce=not self.options.sites_from_streams or
                               event.type == "caption_final")
        if event.type == "caption_partial":
            now = time.monotonic()
            last = self._last_partial.get(event.stream)
            if last is not None and now - last < self.options.partial_interval_s:
                self.partials_rate_limited += 1
                return
            self._last_partial[event.stream] = now
            self._last_partial.move_to_end(event.stream)
            if len(self._last_partial) > MAX_KNOWN_SITES:
                self._last_partial.popitem(last=False)
        topics = SiteTopics(prefix=self.options.prefix, site=site)
        extra = {"mqtt": self.counters()} if event.type == "stats" else None
        data = event_payload(event, site=site, extra=extra)
        if event.type == "keyword":
            name = str(first_field(data, KEYWORD_FIELDS) or "keyword")
            if name not in known.keywords:
                known.keywords.add(name)
                if self.options.ha_discovery and site in self._announced:
                    item = ha_keyword_discovery(topics, name, availability=self.topics.status,
                                                ha_prefix=self.options.ha_prefix,
                                                version=self.options.version)
                    self._enqueue(_Outgoing(topic=item.topic, payload=dumps(item.config),
                                            qos=QOS_AT_LEAST_ONCE, retain=True))
        payload = dumps(data)
        for route in routes(topics, data, levels=self.options.levels):
            if route.retain:
                known.retained.add(route.topic)
            self._enqueue(_Outgoing(topic=route.topic, payload=payload, qos=route.qos,
                                    retain=route.retain))
        if self.options.refined and event.type in ("caption_final", "caption_refined"):
            self._refinement(event, data, site)
        elif self.options.hermes and event.type == "caption_final":
            self._text_captured(data, site)
        if self.options.hermes and event.type == "keyword":
            name = str(first_field(data, KEYWORD_FIELDS) or "default")
            self._enqueue(_Outgoing(
                topic=hermes_hotword_topic(name),
                payload=dumps(hermes_hotword_detected(data, site=self._hermes_site(site))),
                qos=QOS_AT_LEAST_ONCE))

    def _stream_ended(self, event: Event) -> None:
        """A satellite's stream ended while the run goes on (evicted when idle): a site not
        named in advance is forgotten (`forget_evicted_sites`); the event goes out as any."""
        site = self._site_of(event.stream)
        if self.options.sites_from_streams and self.options.forget_evicted_sites and \
                site not in self._pinned:
            self._forget(site)
        topics = SiteTopics(prefix=self.options.prefix, site=site)
        data = event_payload(event, site=site)
        for route in routes(topics, data, levels=self.options.levels):
            self._enqueue(_Outgoing(topic=route.topic, payload=dumps(data), qos=route.qos,
                                    retain=route.retain))

    def _hermes_site(self, site: str) -> str:
        """Hermes `siteId`: the name the satellite published under (`living room`), which
        Hermes clients match on, not the clean id of Harken's topics (`living_room-...`)."""
        return self._site_names.raw(site) if self._site_names is not None else site

    def _text_captured(self, data: dict[str, Any], site: str) -> None:
        if str(data.get("text", "")).strip():
            self._enqueue(_Outgoing(
                topic=HERMES_TEXT_CAPTURED,
                payload=dumps(hermes_text_captured(data, site=self._hermes_site(site))),
                qos=QOS_AT_LEAST_ONCE))

    # -------------------------------------------------------------- refinement

    def _refinement(self, event: Event, data: dict[str, Any], site: str) -> None:
        """A final starts waiting for its refinement; a refinement settles its final."""
        segment = data.get("segment")
        if not isinstance(segment, int):
            return
        key = (event.stream, segment)
        if event.type == "caption_refined":
            if key in self._settling:
                self._settle(key, data)
            return  # else it came after its final settled (counted then)
        wait = self.options.refine_wait_s
        timer = None if wait is None else asyncio.get_running_loop().call_later(
            wait, self._settle, key, None)
        old = self._settling.pop(key, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        self._settling[key] = _Settling(site=site, final=data, timer=timer)
        while len(self._settling) > MAX_SETTLING:
            self._settle(next(iter(self._settling)), None)

    def _settle(self, key: tuple[str, int], refined: dict[str, Any] | None) -> None:
        """Publishes the caption that stands: the accepted refinement's text and words,
        else the final's own."""
        held = self._settling.pop(key, None)
        if held is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        data = dict(held.final, type="caption_settled", refined=False)
        reason = "late"
        if refined is not None:
            reason = str(refined.get("reason", ""))
            if refined.get("accepted") is True:
                data.update(text=refined.get("text", ""), words=refined.get("words", []),
                            refined=True, model=refined.get("model"))
        data["refine_reason"] = reason
        if data["refined"]:
            self.settled_refined += 1
        else:
            self.settled_fallbacks += 1
        topics = SiteTopics(prefix=self.options.prefix, site=held.site)
        self._enqueue(_Outgoing(topic=topics.caption_settled, payload=dumps(data),
                                qos=QOS_AT_LEAST_ONCE))
        if self.options.hermes:
            self._text_captured(data, held.site)

    def _enqueue(self, item: _Outgoing) -> None:
        if item.retain:
            # A retained message replaces the queued one of its topic: only the last counts
            # at the broker, and repeats (HA re-announcements) cannot push finals out.
            for i, old in enumerate(self._outbox):
                if old.retain and old.topic == item.topic:
                    self._outbox[i] = item
                    self.retained_coalesced += 1
                    return
        if item.qos == QOS_AT_MOST_ONCE:
            if not self.connected or len(self._outbox) >= min(QOS0_MAX_BACKLOG,
                                                              self.options.outbox_size):
                self.qos0_dropped += 1
                return
        elif len(self._outbox) >= self.options.outbox_size:
            # Make room: a stale QoS 0 message if there is one, else the oldest message.
            for i, old in enumerate(self._outbox):
                if old.qos == QOS_AT_MOST_ONCE:
                    del self._outbox[i]
                    self.qos0_dropped += 1
                    break
            else:
                self._outbox.popleft()
                self.outbox_dropped += 1
        self._outbox.append(item)
        self._wake.set()

    # -------------------------------------------------------------- connection

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        (self._up if up else self._down).set()
        (self._down if up else self._up).clear()

    def _lost(self) -> None:
        """Connection gone: QoS 0 messages are never kept for later."""
        self._set_connected(False)
        if self._inflight is not None and self._inflight.qos == QOS_AT_MOST_ONCE:
            self._inflight = None
            self.qos0_dropped += 1
        kept = [m for m in self._outbox if m.qos != QOS_AT_MOST_ONCE]
        self.qos0_dropped += len(self._outbox) - len(kept)
        self._outbox = collections.deque(kept)

    def _pending(self) -> bool:
        return bool(self._outbox) or self._inflight is not None

    async def _link(self) -> None:
        backoff = Backoff(initial_s=self.options.backoff_initial_s,
                          max_s=self.options.backoff_max_s, rng=self._rng)
        will = Will(topic=self.topics.status, payload=STATUS_OFFLINE.encode())
        while True:
            if self._closing and (not self._pending() or time.monotonic() >= self._deadline):
                break
            try:
                async with open_client(self.settings, client_id=self.client_id,
                                       will=will) as client:
                    backoff.reset()
                    await self._session(client)
                return
            except aiomqtt.MqttError as exc:
                self._on_failure(exc)
            delay = backoff.next_delay()
            if self._closing:
                await asyncio.sleep(min(delay, max(0.0, self._deadline - time.monotonic())))
            else:
                # Wake at once when the run ends: what is left then gets its own deadline.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), timeout=delay)
        self.undelivered = self.outbox_depth

    def _on_failure(self, exc: aiomqtt.MqttError) -> None:
        was_up = self.connected
        self._lost()
        self.last_error = str(exc) or type(exc).__name__
        if was_up:
            log.warning("MQTT connection to %s lost (%s); reconnecting, results wait in the "
                        "outbox", self.settings.address, self.last_error)
        else:
            self.connect_failures += 1
            if not self._outage_logged:  # once per outage, not once per retry
                log.warning("cannot connect to the MQTT broker at %s (%s); retrying with "
                            "backoff", self.settings.address, self.last_error)
        self._outage_logged = True

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's life; returns after a clean close, raises MqttError if lost."""
        timeout = self.options.publish_timeout_s
        try:
            await client.publish(self.topics.status, STATUS_ONLINE.encode(),
                                 qos=QOS_AT_LEAST_ONCE, retain=True, timeout=timeout)
            self.connects += 1
            self._outage_logged = False
            if self.connects > 1:
                self.reconnects += 1
                log.warning("MQTT connection to %s is back; sending %d waiting message(s)",
                            self.settings.address, self.outbox_depth)
            self._set_connected(True)
            if self.options.ha_discovery:
                self._last_announce = time.monotonic()
                for site in self._sites:
                    if site in self._announced:
                        self._announce(site)
            self._publish_state()
            lost: aiomqtt.MqttError | None = None
            try:
                async with asyncio.TaskGroup() as tg:
                    # Nothing is subscribed here; iterating notices a lost connection at once.
                    watcher = tg.create_task(self._receive(client), name="mqtt-watch")
                    await self._send(client)
                    watcher.cancel()
            except* aiomqtt.MqttError as group:
                first = group.exceptions[0]
                lost = first if isinstance(first, aiomqtt.MqttError) else None
            if lost is not None:
                raise lost
        except asyncio.CancelledError:
            # Stopped from outside (Ctrl-C): a clean disconnect suppresses the last will,
            # so say `offline` ourselves, briefly.
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await asyncio.wait_for(
                    client.publish(self.topics.status, STATUS_OFFLINE.encode(),
                                   qos=QOS_AT_LEAST_ONCE, retain=True),
                    timeout=OFFLINE_ON_CANCEL_S)
            raise
        finally:
            self._set_connected(False)

    async def _send(self, client: aiomqtt.Client) -> None:
        """The only writer: outbox head first; returns after `offline` when closing."""
        while True:
            while not self._pending() and not self._closing:
                self._wake.clear()
                await self._wake.wait()
            if not self._pending() or (self._closing and time.monotonic() >= self._deadline):
                break
            if self._inflight is None:
                self._inflight = self._outbox.popleft()
            item = self._inflight
            await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain,
                                 timeout=self.options.publish_timeout_s)
            self._inflight = None
            self.published += 1
        self.undelivered = self.outbox_depth
        await client.publish(self.topics.status, STATUS_OFFLINE.encode(),
                             qos=QOS_AT_LEAST_ONCE, retain=True,
                             timeout=self.options.publish_timeout_s)

    def _family(self, topic: str) -> str:
        if topic == self.topics.control:
            return "control"
        if topic == f"{self.options.ha_prefix}/status":
            return "ha_status"
        return OTHER

    async def _listen(self, name: str, topics: list[str]) -> None:
        """One subscription's connection (`harken-<site>-control`, `-ha`), until cancelled.

        Anyone may publish on these topics as fast as the network allows. On a connection of
        their own, a flood cannot delay the acknowledgements and keepalives of the results
        connection, and a flood of `<ha>/status` cannot make the broker drop a command: a
        broker drops QoS 0 messages for a client that reads too slowly, per connection.
        """
        backoff = Backoff(initial_s=self.options.backoff_initial_s,
                          max_s=self.options.backoff_max_s, rng=self._rng)
        listening = self._listening[name]
        logged = False
        while True:
            try:
                async with open_client(self.settings, client_id=f"{self.client_id}-{name}",
                                       inbox=self.inbox) as client:
                    for topic in topics:
                        await client.subscribe(topic, qos=QOS_AT_LEAST_ONCE,
                                               timeout=self.options.publish_timeout_s)
                    backoff.reset()
                    listening.set()
                    logged = False
                    await self._receive(client)
            except aiomqtt.MqttError as exc:
                # The results connection reports outages; this one notes its own, once.
                if not logged:
                    log.info("MQTT %s subscription to %s lost (%s); reconnecting", name,
                             self.settings.address, exc)
                logged = True
            except MqttConfigError:
                return  # a login the broker refuses: the results connection reports it
            finally:
                listening.clear()
            await asyncio.sleep(backoff.next_delay())

    async def _receive(self, client: aiomqtt.Client) -> None:
        # One wait per batch, not per message: the library's iterator costs a task and a few
        # loop turns per message, slower than its reader under a flood.
        async for first in client.messages:
            self._handle(first)
            for message in self.inbox.drain():
                self._handle(message)

    def _handle(self, message: aiomqtt.Message) -> None:
        raw = message.payload
        payload = bytes(raw) if isinstance(raw, (bytes, bytearray)) else b""
        self.on_message(message.topic.value, payload, retain=bool(message.retain))

    def on_message(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """One message from a subscription (control, HA status). Never raises: anyone may
        publish there, so whatever goes wrong rejects this one message, counted."""
        try:
            if aiomqtt.Topic(topic).matches(self.topics.control):
                if not retain:  # a retained command would re-run on every connect
                    self._command(payload)
            elif aiomqtt.Topic(topic).matches(f"{self.options.ha_prefix}/status") and \
                    not retain and payload.strip() == STATUS_ONLINE.encode():
                self._ha_online()  # Home Assistant restarted: it forgot non-retained state
        except Exception as exc:  # untrusted input: one message must never end the run
            self.rejections.reject("error", f"{topic}: {type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------- control

    def _command(self, payload: bytes) -> None:
        try:
            command = parse_command(payload)
            if self._control is None:
                raise ControlError("this Harken session has no engine to control yet; retry "
                                   "once it runs", code="unsupported",
                                   command=command_name(command), request_id=command.id)
            apply(command, self._control)
        except ControlError as err:
            self.commands_rejected += 1
            self.rejections.reject(err.code, f"{self.topics.control}: {err}")
            now = time.monotonic()
            if self._replies is None:
                self._replies = TokenBucket.full(rate=ERROR_REPLIES_PER_S,
                                                 burst=ERROR_REPLY_BURST, now=now)
            if not self._replies.take(1.0, now):
                # A flood of bad commands must not fill the outbox (and push finals out).
                self.error_replies_dropped += 1
                return
            self._enqueue(_Outgoing(
                topic=self.topics.error, qos=QOS_AT_LEAST_ONCE,
                payload=dumps(error_payload(err, site=self.options.site,
                                            schema_version=SCHEMA_VERSION))))
            return
        self.commands_applied += 1
        self._last_command = {"command": command_name(command), "id": command.id}
        self._publish_state()

    def _publish_state(self) -> None:
        """Retained `<prefix>/<site>/state`: what the control topic last set."""
        if self._control is None:
            return
        self._state_paused = bool(self._control.paused)
        state = {"schema_version": SCHEMA_VERSION, "site": self.options.site, "type": "state",
                 "paused": self._state_paused, "last_command": self._last_command}
        by = getattr(self._control, "paused_by", None)
        if isinstance(by, frozenset):  # who paused: "local" (this machine), "remote"
            state["paused_by"] = sorted(by)
        self._enqueue(_Outgoing(topic=self.topics.state, payload=dumps(state),
                                qos=QOS_AT_LEAST_ONCE, retain=True))
