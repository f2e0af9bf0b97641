"""MQTT topic names and payloads: Harken's own topics, Hermes and Home Assistant discovery.

Pure functions and frozen dataclasses, no I/O: the sink (sink.py) decides *when* to
publish, this module decides *what* and *where*. Payloads of Harken's own topics are the
JSONL event schema (`Event.to_dict()`) plus `schema_version` and `site`, so a line from
`harken run --jsonl` and an MQTT message of the same event carry the same fields.

Event types are routed by their `type` name, so events added later (speaker_turn, keyword,
translation) need no change here; an unknown type goes to `<prefix>/<site>/event/<type>`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import socket
import unicodedata
from dataclasses import dataclass
from typing import Any

from harken.engine.events import SCHEMA_VERSION, Event

DEFAULT_PREFIX = "harken"
DEFAULT_HA_PREFIX = "homeassistant"
HERMES_TEXT_CAPTURED = "hermes/asr/textCaptured"
HERMES_AUDIO_FILTER = "hermes/audioServer/+/audioFrame"
STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
HA_SENSOR_STATE_MAX = 255  # characters: Home Assistant rejects longer sensor states

QOS_AT_MOST_ONCE = 0
QOS_AT_LEAST_ONCE = 1

# Field names the later task events are expected to use; the first present one wins.
KEYWORD_FIELDS = ("keyword", "label", "name")
LANGUAGE_FIELDS = ("lang", "language", "target_lang")
SCORE_FIELDS = ("score", "confidence", "likelihood")

_TOPIC_UNSAFE = re.compile(r"[+#/\s\x00-\x1f\x7f]+")
# Unicode categories dropped from ids: controls (C1 too), format (bidi, zero-width),
# surrogates, private use, unassigned, line and paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")
MAX_SITE_LEN = 64  # characters
SANITIZE_CHARS = 4 * MAX_SITE_LEN  # characters of a name cleaned; a hash covers the rest
HA_ID_HASH_HEX = 16  # hex digits (64 bits): finding a second name with one is out of reach
# What a hashed Home Assistant id ends with; a plain id must not look like one.
SAT_ID_HASH_HEX = 16  # hex digits of a satellite id's hash: 64 bits, not worth searching
_SAT_HASHED = re.compile(rf"-[0-9a-f]{{{SAT_ID_HASH_HEX}}}$")
_HA_HASHED = re.compile(rf"_[0-9a-f]{{{HA_ID_HASH_HEX}}}$")
MAX_HERMES_SITE_ID = 256  # characters of a satellite's own name echoed as Hermes siteId
MAX_SITE_NAMES = 1024  # site ids whose raw satellite name is remembered (least recent go)


class TopicError(ValueError):
    """A prefix, site id or topic filter that MQTT cannot use."""


def sanitize_level(name: str, *, fallback: str) -> str:
    """One topic level from free text: no `+`, `#`, `/`, whitespace, control characters
    (C0 and C1) or invisible format characters (bidi overrides, zero-width ones), which
    would otherwise reach terminals and let "kitchen\u200b" pass for "kitchen".

    Runs of unsafe characters become `_`; a leading `$` (reserved for broker topics) is
    dropped; an empty result becomes `fallback`.
    """
    # Only the head can survive the cut to MAX_SITE_LEN; bounding it bounds the per-character
    # pass, which runs for every satellite frame (a topic level may be 64 KiB long).
    head = name[:SANITIZE_CHARS]
    if not head.isprintable():
        head = "".join(" " if unicodedata.category(ch) in _INVISIBLE else ch for ch in head)
    cleaned = _TOPIC_UNSAFE.sub("_", head.strip()).strip("_").lstrip("$")
    return cleaned[:MAX_SITE_LEN] or fallback


def satellite_id(raw: str, *, fallback: str = "satellite") -> str:
    """The stream and topic id of a satellite named `raw` by the network: `raw` itself when it
    is a clean level of at most MAX_SITE_LEN characters, else its sanitised, shortened form
    plus 16 hex digits of a hash of `raw`, so that two satellites whose names clean or cut to
    the same text ("a b" and "a_b", long names sharing 64 characters) never share a stream.
    """
    cleaned = sanitize_level(raw, fallback="")
    # A clean name that ends like a hashed id is hashed too: "living_room-d2cbc083b0e02f0c"
    # published by anyone must not share the stream of "living room". An empty level is
    # never the hub's own (empty) id.
    if cleaned and cleaned == raw and not _SAT_HASHED.search(raw):
        return raw
    digest = hashlib.blake2s(raw.encode("utf-8", "surrogatepass"),
                             digest_size=SAT_ID_HASH_HEX // 2).hexdigest()
    return f"{(cleaned or fallback)[:MAX_SITE_LEN - len(digest) - 1]}-{digest}"


def default_site() -> str:
    """The host name (first label), sanitised: the default site id."""
    return sanitize_level(socket.gethostname().split(".")[0], fallback="harken")


def object_id(name: str) -> str:
    """Home Assistant node/object id: only [a-zA-Z0-9_-], lower case."""
    return _ID_UNSAFE.sub("_", name).strip("_").lower() or "x"


def ha_site_id(site: str) -> str:
    """A site's Home Assistant id (device id, node id and unique_id prefix), one per site id.

    `object_id(site)` alone would merge names ("Kitchen" and "kitchen", "Küche" and "Köche"
    are one device), letting one site's publisher take over another's entities. So a site
    whose object id is not the site id itself gets 16 hex digits of a hash of the site id
    (`Kitchen` -> `kitchen_<hash>`). Names that already are plain ids (`kitchen`,
    `living_room-d2cbc083b0e02f0c`) keep them unchanged, so existing automations go on working, and
    the id depends on the name only, so it is the same after every restart. A plain name
    that ends like a hashed id (`_` and 16 hex digits) is hashed too, so no name can take
    another one's hashed id.
    """
    plain = object_id(site)
    if plain == site and not _HA_HASHED.search(site):
        return site
    digest = hashlib.blake2s(site.encode("utf-8", "surrogatepass"),
                             digest_size=HA_ID_HASH_HEX // 2).hexdigest()
    return f"{plain}_{digest}"


class SiteNames:
    """The name each satellite used (its raw topic level), by site id, for Hermes `siteId`.

    Harken's own topics use the clean site id (`living_room-d2cbc083b0e02f0c`); Hermes clients match
    on the name the satellite published under (`living room`), so that is what Hermes
    messages echo. The source records a name when a frame of the site decodes (noise under
    made-up names never gets in); names that are not clean UTF-8 or longer than
    MAX_HERMES_SITE_ID are not kept (the site id stands in). Bounded: the least recently
    recorded of more than `max_names` are forgotten (their site id then stands in).
    """

    def __init__(self, *, max_names: int = MAX_SITE_NAMES) -> None:
        if max_names < 1:
            raise ValueError(f"max_names must be >= 1, got {max_names}")
        self.max_names = max_names
        self._names: collections.OrderedDict[str, str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._names)

    def record(self, site: str, raw: str) -> None:
        if raw == site or len(raw) > MAX_HERMES_SITE_ID:
            return
        try:
            raw.encode("utf-8")  # a lone surrogate would fail json's UTF-8 output later
        except UnicodeEncodeError:
            return
        self._names[site] = raw
        self._names.move_to_end(site)
        while len(self._names) > self.max_names:
            self._names.popitem(last=False)

    def raw(self, site: str) -> str:
        """The name site `site` used, or `site` itself when it is not known."""
        return self._names.get(site, site)


def check_prefix(prefix: str) -> str:
    """A topic prefix such as `harken` or `home/harken`; raises TopicError otherwise."""
    if not prefix or prefix.startswith(("/", "$")) or prefix.endswith("/") or "//" in prefix:
        raise TopicError(f"MQTT topic prefix {prefix!r} is not usable: it must be non-empty, "
                         "must not start with '/' or '$', end with '/' or contain '//' "
                         "(e.g. 'harken' or 'home/harken')")
    if any(c in prefix for c in "+#\x00"):
        raise TopicError(f"MQTT topic prefix {prefix!r} contains a wildcard ('+' or '#'); "
                         "choose a plain prefix such as 'harken'")
    return prefix


def check_filter(topic_filter: str) -> str:
    """An MQTT subscription filter: `#` only as the whole last level, `+` only whole levels."""
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or \
                ("+" in level and level != "+"):
            raise TopicError(f"MQTT topic filter {topic_filter!r} is invalid: '+' must be a "
                             "whole level and '#' the whole last level "
                             f"(e.g. {HERMES_AUDIO_FILTER!r})")
    if not topic_filter:
        raise TopicError(f"empty MQTT topic filter; use e.g. {HERMES_AUDIO_FILTER!r}")
    return topic_filter


def site_from_topic(topic_filter: str, topic: str) -> str | None:
    """The site a message came from: what the filter's first `+` (or `#`) matched.

    None if the topic does not match the filter. Without wildcards, the last topic level.
    """
    want = topic_filter.split("/")
    got = topic.split("/")
    site: str | None = None
    for i, level in enumerate(want):
        if level == "#":
            rest = "/".join(got[i:])
            return site if site is not None else (rest or None)
        if i >= len(got):
            return None
        if level == "+":
            if site is None:
                site = got[i]
        elif level != got[i]:
            return None
    if len(got) != len(want):
        return None
    return site if site is not None else got[-1]


def site_filters(topic_filter: str, sites: frozenset[str]) -> list[str]:
    """The subscriptions for `topic_filter` when only `sites` may stream: the filter's
    site level (its first `+`) replaced by each site, so the broker never sends what other
    site names publish. A site is used as it is (`Living Room` too: any text but `+`, `#`,
    `/` and NUL is a topic level). The filter itself when there is no list, no `+` to
    replace, or a site that cannot be a topic level."""
    levels = topic_filter.split("/")
    if not sites or "+" not in levels or \
            any(not site or any(c in site for c in "+#/\x00") for site in sites):
        return [topic_filter]
    i = levels.index("+")
    return ["/".join([*levels[:i], site, *levels[i + 1:]]) for site in sorted(sites)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where and how one message goes."""

    topic: str
    qos: int
    retain: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteTopics:
    """Topic names of one site under one prefix (`harken/<site>/...`)."""

    prefix: str
    site: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def control(self) -> str:
        """`<prefix>/<site>/set`: JSON commands (control.py)."""
        return f"{self.base}/set"

    @property
    def error(self) -> str:
        return f"{self.base}/error"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def caption_partial(self) -> str:
        return f"{self.base}/caption/partial"

    @property
    def caption_final(self) -> str:
        return f"{self.base}/caption/final"

    @property
    def caption_refined(self) -> str:
        return f"{self.base}/caption/refined"

    @property
    def caption_settled(self) -> str:
        """With refinement on: each final once, with the text that stands (sink.py)."""
        return f"{self.base}/caption/settled"

    @property
    def speaker_turn(self) -> str:
        return f"{self.base}/speaker/turn"

    @property
    def speaker_current(self) -> str:
        return f"{self.base}/speaker/current"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def keyword(self, name: str) -> str:
        return f"{self.base}/keyword/{sanitize_level(name, fallback='keyword')}"

    def translation(self, lang: str) -> str:
        return f"{self.base}/translation/{sanitize_level(lang, fallback='unknown')}"

    def generic(self, event_type: str) -> str:
        return f"{self.base}/event/{sanitize_level(event_type, fallback='event')}"


def first_field(data: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = data.get(name)
        if value is not None:
            return value
    return None


def routes(topics: SiteTopics, data: dict[str, Any], *, levels: bool) -> list[Route]:
    """Harken topics for one event dict (the JSONL schema). Empty: not published."""
    kind = data.get("type")
    q0, q1 = QOS_AT_MOST_ONCE, QOS_AT_LEAST_ONCE
    if kind == "caption_partial":
        return [Route(topic=topics.caption_partial, qos=q0)]
    if kind == "caption_final":
        return [Route(topic=topics.caption_final, qos=q1)]
    if kind == "caption_refined":
        return [Route(topic=topics.caption_refined, qos=q1)]
    if kind == "speaker_turn":
        return [Route(topic=topics.speaker_turn, qos=q1),
                Route(topic=topics.speaker_current, qos=q1, retain=True)]
    if kind == "keyword":
        name = str(first_field(data, KEYWORD_FIELDS) or "keyword")
        return [Route(topic=topics.keyword(name), qos=q1)]
    if kind == "translation":
        lang = str(first_field(data, LANGUAGE_FIELDS) or "unknown")
        return [Route(topic=topics.translation(lang), qos=q1)]
    if kind == "stats":
        return [Route(topic=topics.stats, qos=q0)]
    if kind == "error":
        return [Route(topic=topics.error, qos=q1)]
    if kind == "speech_started":
        return [Route(topic=f"{topics.base}/speech/started", qos=q1)]
    if kind == "speech_ended":
        return [Route(topic=f"{topics.base}/speech/ended", qos=q1)]
    if kind == "level":
        return [Route(topic=f"{topics.base}/level", qos=q0)] if levels else []
    return [Route(topic=topics.generic(str(kind or "event")), qos=q1)]


def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def event_payload(event: Event, *, site: str, extra: dict[str, Any] | None = None) -> \
        dict[str, Any]:
    """The JSONL event dict, versioned and tagged with its site."""
    data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "site": site}
    data.update(event.to_dict())
    if extra:
        data.update(extra)
    return data


# ----------------------------------------------------------------------------- Hermes


def hermes_text_captured(data: dict[str, Any], *, site: str) -> dict[str, Any]:
    """`hermes/asr/textCaptured` for a caption_final dict (Rhasspy/Snips field names).

    CTC finals carry no confidence, so `likelihood` is the event's own score when it has
    one and 1.0 otherwise; token confidences likewise.
    """
    score = first_field(data, SCORE_FIELDS)
    likelihood = float(score) if isinstance(score, (int, float)) else 1.0
    start, end = float(data.get("start", 0.0)), float(data.get("end", 0.0))
    text = str(data.get("text", "")).strip()
    tokens: list[dict[str, Any]] = []
    offset = 0
    for word in data.get("words") or []:
        value = str(word.get("word", ""))
        at = text.find(value, offset)
        at = offset if at < 0 else at
        tokens.append({"value": value, "confidence": likelihood, "rangeStart": at,
                       "rangeEnd": at + len(value),
                       "time": {"start": float(word.get("start", start)),
                                "end": float(word.get("end", end))}})
        offset = at + len(value)
    return {
        "text": text,
        "likelihood": likelihood,
        "seconds": round(max(0.0, end - start), 3),
        "siteId": site,
        "sessionId": None,
        "wakewordId": None,
        "asrTokens": [tokens] if tokens else [],
        "lang": data.get("lang"),
    }


def hermes_hotword_topic(name: str) -> str:
    return f"hermes/hotword/{sanitize_level(name, fallback='default')}/detected"


def hermes_hotword_detected(data: dict[str, Any], *, site: str) -> dict[str, Any]:
    """`hermes/hotword/<keyword>/detected` for a keyword dict (Rhasspy/Snips field names)."""
    name = str(first_field(data, KEYWORD_FIELDS) or "default")
    score = first_field(data, SCORE_FIELDS)
    return {
        "modelId": name,
        "modelVersion": "",
        "modelType": "universal",
        "currentSensitivity": float(score) if isinstance(score, (int, float)) else 1.0,
        "siteId": site,
        "sessionId": None,
        "sendAudioCaptured": None,
        "lang": data.get("lang"),
        "customEntities": None,
    }


# ------------------------------------------------------------------ Home Assistant discovery


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovery:
    """One retained Home Assistant discovery config."""

    topic: str
    config: dict[str, Any]


def _device(site: str, version: str) -> dict[str, Any]:
    return {"identifiers": [f"harken_{ha_site_id(site)}"], "name": f"Harken {site}",
            "manufacturer": "Harken", "model": "Harken listening engine",
            "sw_version": version}


def _common(topics: SiteTopics, availability: str, version: str, unique: str) -> \
        dict[str, Any]:
    return {
        "unique_id": unique,
        "availability_topic": availability,
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
        "device": _device(topics.site, version),
        "origin": {"name": "Harken", "sw_version": version},
    }


def ha_speaker_config_topic(topics: SiteTopics, ha_prefix: str = DEFAULT_HA_PREFIX) -> str:
    """The current-speaker sensor's config topic (cleared when diarization is off)."""
    return f"{ha_prefix}/sensor/harken_{ha_site_id(topics.site)}/current_speaker/config"


def ha_discovery(topics: SiteTopics, *, availability: str, keywords: tuple[str, ...] = (),
                 ha_prefix: str = DEFAULT_HA_PREFIX, version: str = "",
                 refined: bool = False, speakers: bool = True) -> list[Discovery]:
    """Configs for a site: last-caption sensor, current-speaker sensor (with `speakers`:
    diarization runs in this session), one event per keyword.

    `availability` is the status topic of the Harken instance that serves the site (the
    last will makes entities unavailable when Harken goes away). With `refined`
    (refinement on), the caption sensor reads `caption/settled`: each caption once, with
    its refined text when that came in time, else the CTC text (a sensor on
    `caption/final` would show the upper-case CTC text; one on both topics would change
    twice per caption and fire automations twice).
    """
    node = f"harken_{ha_site_id(topics.site)}"
    caption = topics.caption_settled if refined else topics.caption_final
    attributes = "'start': value_json.start, 'end': value_json.end, " \
                 "'speaker': value_json.speaker, 'stream': value_json.stream"
    if refined:
        attributes += ", 'refined': value_json.refined"
    out = [
        Discovery(topic=f"{ha_prefix}/sensor/{node}/last_caption/config", config={
            "name": "Last caption",
            **_common(topics, availability, version, f"{node}_last_caption"),
            "state_topic": caption,
            "value_template": f"{{{{ value_json.text[:{HA_SENSOR_STATE_MAX}] }}}}",
            "json_attributes_topic": caption,
            "json_attributes_template": f"{{{{ {{{attributes}}} | tojson }}}}",
            "icon": "mdi:closed-caption-outline",
        }),
    ]
    if speakers:
        out.append(Discovery(topic=ha_speaker_config_topic(topics, ha_prefix), config={
            "name": "Current speaker",
            **_common(topics, availability, version, f"{node}_current_speaker"),
            "state_topic": topics.speaker_current,
            "value_template": "{{ value_json.speaker }}",
            "icon": "mdi:account-voice",
        }))
    out.extend(ha_keyword_discovery(topics, name, availability=availability,
                                    ha_prefix=ha_prefix, version=version)
               for name in keywords)
    return out


def ha_keyword_discovery(topics: SiteTopics, name: str, *, availability: str,
                         ha_prefix: str = DEFAULT_HA_PREFIX, version: str = "") -> Discovery:
    """An `event` entity that fires `detected` each time keyword `name` is spotted."""
    node = f"harken_{ha_site_id(topics.site)}"
    obj = f"keyword_{object_id(name)}"
    return Discovery(topic=f"{ha_prefix}/event/{node}/{obj}/config", config={
        "name": f"Keyword {name}",
        **_common(topics, availability, version, f"{node}_{obj}"),
        "state_topic": topics.keyword(name),
        "event_types": ["detected"],
        "value_template": "{{ {'event_type': 'detected', 'start': value_json.start, "
                          "'end': value_json.end} | tojson }}",
        "icon": "mdi:account-voice",
    })
