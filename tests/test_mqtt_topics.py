"""MQTT without a broker: topic names, payloads, Hermes, HA discovery, control commands,
WAV frame decoding, URLs, backoff, configuration, and the outbox while the broker is away."""

from __future__ import annotations

import asyncio
import io
import random
import wave
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from mosquitto import free_port

from harken.app.config import HarkenConfig, KeywordsConfig, MqttConfig
from harken.app.flags import build_parser
from harken.app.flags import load as _load
from harken.app.mqtt import MqttSetup, resolve_password, settings_from_url
from harken.engine.bus import EventBus
from harken.engine.events import (
    SCHEMA_VERSION,
    CaptionFinal,
    CaptionPartial,
    Event,
    Word,
)
from harken.engine.mqtt.client import Backoff, MqttSettings, parse_url
from harken.engine.mqtt.control import (
    ControlError,
    Pause,
    Resume,
    SetKeywords,
    SetTranslation,
    apply,
    parse_command,
)
from harken.engine.mqtt.satellites import (
    MalformedFrame,
    SatelliteSource,
    SiteLimits,
    decode_wav,
)
from harken.engine.mqtt.sink import MqttSink, MqttSinkOptions
from harken.engine.mqtt.topics import (
    HERMES_AUDIO_FILTER,
    MAX_SITE_LEN,
    SiteTopics,
    TopicError,
    check_filter,
    check_prefix,
    event_payload,
    ha_discovery,
    hermes_hotword_detected,
    hermes_hotword_topic,
    hermes_text_captured,
    routes,
    sanitize_level,
    satellite_id,
    site_from_topic,
)
from harken.models.errors import ConfigError, MqttConfigError

TOPICS = SiteTopics(prefix="harken", site="den")


def wav_bytes(samples: np.ndarray, *, rate: int = 16_000, width: int = 2,
              channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------------------- topics


@pytest.mark.parametrize(("raw", "clean"), [
    ("kitchen", "kitchen"), ("living room", "living_room"), ("a/b+c#d", "a_b_c_d"),
    ("$SYS", "SYS"), ("  ", "fallback"), ("x" * 100, "x" * 64),
])
def test_sanitize_level_removes_what_mqtt_reserves(raw: str, clean: str) -> None:
    assert sanitize_level(raw, fallback="fallback") == clean


def test_satellite_ids_stay_distinct_when_cleaning_or_cutting_would_merge_them() -> None:
    assert satellite_id("kitchen") == "kitchen"  # clean names are kept as they are
    merged = ["a b", "a_b", "a\tb", "x" * 64 + "1", "x" * 64 + "2", "x" * 64]
    ids = [satellite_id(raw) for raw in merged]
    assert len(set(ids)) == len(ids)
    assert ids[1] == "a_b"
    assert ids[5] == "x" * 64
    assert ids[0].startswith("a_b-")
    assert ids[2].startswith("a_b-")
    assert all(len(i) <= MAX_SITE_LEN and sanitize_level(i, fallback="") == i for i in ids)
    assert satellite_id("a b") == ids[0]  # stable: the same name, the same stream
    assert satellite_id("$$").startswith("satellite-")


@pytest.mark.parametrize("raw", [
    "kitchen\u200b",  # zero-width space: would pass for "kitchen" on screen
    "\u202ekitchen",  # right-to-left override: would reverse the caption line
    "a\x9b2J",  # C1 CSI: an escape sequence on 8-bit terminals
    "\x9d0;title\x9c",  # C1 OSC ... ST
    "kit\u2028chen",  # line separator
])
def test_site_ids_keep_no_invisible_or_control_characters(raw: str) -> None:
    site = satellite_id(raw)
    assert site != "kitchen"
    assert all(ch.isprintable() and not ch.isspace() for ch in site), ascii(site)
    assert satellite_id("台所") == "台所"  # visible text of any script is kept as it is
    assert satellite_id("e\u0301te\u0301") == "e\u0301te\u0301"  # combining accents too


def test_a_huge_site_name_is_cleaned_from_its_head_and_hashed_whole() -> None:
    huge = "kitchen\u200b" + "x" * 65_000  # a topic level may be 64 KiB
    other = "kitchen\u200b" + "x" * 64_999 + "y"
    site = satellite_id(huge)
    assert site.startswith("kitchen_x")
    assert len(site) <= MAX_SITE_LEN
    assert site.isprintable()
    assert satellite_id(other) != site  # the hash covers the whole name


def test_no_name_takes_another_satellites_id() -> None:
    hashed = satellite_id("living room")
    assert hashed.startswith("living_room-")
    assert len(hashed) == len("living_room-") + 16
    assert satellite_id(hashed) != hashed  # a clean name spelled like a hashed id is hashed
    assert satellite_id("") not in ("", "satellite")  # never the hub's own (empty) site
    assert satellite_id("").startswith("satellite-")


def test_site_from_topic_takes_the_plus_level_and_rejects_non_matches() -> None:
    assert site_from_topic(HERMES_AUDIO_FILTER, "hermes/audioServer/kitchen/audioFrame") == \
        "kitchen"
    assert site_from_topic(HERMES_AUDIO_FILTER, "hermes/audioServer/kitchen/playBytes") is None
    assert site_from_topic(HERMES_AUDIO_FILTER, "hermes/audioServer/kitchen") is None
    assert site_from_topic("sat/#", "sat/hall/mic") == "hall/mic"
    assert site_from_topic("audio/den", "audio/den") == "den"


@pytest.mark.parametrize("bad", ["a/#/b", "a/b#", "a+/b", ""])
def test_bad_filters_and_prefixes_are_rejected_with_an_example(bad: str) -> None:
    with pytest.raises(TopicError, match=r"e\.g\."):
        check_filter(bad)
    with pytest.raises(TopicError):
        check_prefix(bad or "/x")


def test_every_event_type_has_a_route_with_the_documented_qos() -> None:
    def route(data: dict[str, Any], levels: bool = False) -> list[tuple[str, int, bool]]:
        return [(r.topic, r.qos, r.retain) for r in routes(TOPICS, data, levels=levels)]

    assert route({"type": "caption_partial"}) == [("harken/den/caption/partial", 0, False)]
    assert route({"type": "caption_final"}) == [("harken/den/caption/final", 1, False)]
    assert route({"type": "speaker_turn", "speaker": "S1"}) == [
        ("harken/den/speaker/turn", 1, False), ("harken/den/speaker/current", 1, True)]
    assert route({"type": "keyword", "keyword": "lights on"}) == [
        ("harken/den/keyword/lights_on", 1, False)]
    assert route({"type": "translation", "lang": "de"}) == [
        ("harken/den/translation/de", 1, False)]
    assert route({"type": "stats"}) == [("harken/den/stats", 0, False)]
    assert route({"type": "error"}) == [("harken/den/error", 1, False)]
    assert route({"type": "speech_started"}) == [("harken/den/speech/started", 1, False)]
    assert route({"type": "level"}) == []
    assert route({"type": "level"}, levels=True) == [("harken/den/level", 0, False)]
    assert route({"type": "sound_event"}) == [("harken/den/event/sound_event", 1, False)]


def test_payload_is_the_jsonl_schema_plus_version_and_site() -> None:
    final = CaptionFinal(stream="mic", start=1.0, end=2.5, segment=3, text="hi there",
                         words=(Word(word="hi", start=1.0, end=1.2),))
    data = event_payload(final, site="den")
    assert data == {"schema_version": SCHEMA_VERSION, "site": "den", **final.to_dict()}
    assert data["words"] == [{"word": "hi", "start": 1.0, "end": 1.2}]


def test_hermes_payloads_use_hermes_field_names() -> None:
    final = CaptionFinal(stream="mic", start=1.0, end=2.5, segment=3, text="turn it on",
                         words=(Word(word="turn", start=1.0, end=1.3),
                                Word(word="it", start=1.3, end=1.5),
                                Word(word="on", start=1.6, end=1.9)))
    text = hermes_text_captured(final.to_dict(), site="kitchen")
    assert text["text"] == "turn it on"
    assert text["siteId"] == "kitchen"
    assert text["seconds"] == pytest.approx(1.5)
    assert text["likelihood"] == 1.0  # CTC finals have no confidence
    tokens = text["asrTokens"][0]
    assert [(t["value"], t["rangeStart"], t["rangeEnd"]) for t in tokens] == [
        ("turn", 0, 4), ("it", 5, 7), ("on", 8, 10)]
    assert tokens[2]["time"] == {"start": 1.6, "end": 1.9}
    hot = hermes_hotword_detected({"type": "keyword", "keyword": "hey harken", "score": 0.8},
                                  site="kitchen")
    assert hot["modelId"] == "hey harken"
    assert hot["siteId"] == "kitchen"
    assert hot["currentSensitivity"] == 0.8
    assert hermes_hotword_topic("hey harken") == "hermes/hotword/hey_harken/detected"


def test_ha_discovery_configs_tie_entities_to_the_status_topic() -> None:
    configs = ha_discovery(TOPICS, availability="harken/den/status", keywords=("Lights On",),
                           version="1.2")
    by_topic = {c.topic: c.config for c in configs}
    assert set(by_topic) == {
        "homeassistant/sensor/harken_den/last_caption/config",
        "homeassistant/sensor/harken_den/current_speaker/config",
        "homeassistant/event/harken_den/keyword_lights_on/config",
    }
    caption = by_topic["homeassistant/sensor/harken_den/last_caption/config"]
    assert caption["state_topic"] == "harken/den/caption/final"
    assert caption["value_template"] == "{{ value_json.text[:255] }}"
    keyword = by_topic["homeassistant/event/harken_den/keyword_lights_on/config"]
    assert keyword["state_topic"] == "harken/den/keyword/Lights_On"
    assert keyword["event_types"] == ["detected"]
    for config in by_topic.values():
        assert config["availability_topic"] == "harken/den/status"
        assert (config["payload_available"], config["payload_not_available"]) == \
            ("online", "offline")
        assert config["device"]["identifiers"] == ["harken_den"]
        assert config["device"]["sw_version"] == "1.2"
    assert len({c["unique_id"] for c in by_topic.values()}) == 3


# --------------------------------------------------------------------------- control


class Target:
    def __init__(self) -> None:
        self.paused = False
        self.translation: str | None = "unset"

    def pause(self, *, by: str = "local") -> None:
        self.paused = True

    def resume(self, *, by: str = "local") -> None:
        self.paused = False


class TranslatingTarget(Target):
    def set_translation(self, language: str | None) -> None:
        self.translation = language


def test_commands_parse_into_typed_commands() -> None:
    assert parse_command(b'{"command": "pause", "id": 7}') == Pause(id="7")
    assert parse_command(b"resume") == Resume()
    assert parse_command(b'{"command": "keywords", "keywords": ["stop", " stop ", "go"]}') \
        == SetKeywords(keywords=("stop", "go"))
    assert parse_command(b'{"command": "translation", "language": "pt-BR"}') == \
        SetTranslation(language="pt-BR")
    assert parse_command(b'{"command": "translation", "language": null}') == \
        SetTranslation(language=None)


@pytest.mark.parametrize(("payload", "code"), [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"[1, 2]", "invalid_command"),
    (b'{"verb": "pause"}', "invalid_command"),
    (b'{"command": "reboot"}', "unknown_command"),
    (b'{"command": "pause", "force": true}', "invalid_argument"),
    (b'{"command": "keywords", "keywords": "stop"}', "invalid_argument"),
    (b'{"command": "keywords", "keywords": [""]}', "invalid_argument"),
    (b'{"command": "translation", "language": "German!"}', "invalid_argument"),
    (b"x" * 5000, "too_large"),
])
def test_invalid_commands_raise_control_errors_with_a_code(payload: bytes, code: str) -> None:
    with pytest.raises(ControlError) as info:
        parse_command(payload)
    assert info.value.code == code
    assert str(info.value)


def test_apply_acts_only_on_what_the_target_supports() -> None:
    target = Target()
    apply(Pause(), target)
    assert target.paused
    apply(Resume(), target)
    assert not target.paused
    with pytest.raises(ControlError, match="keyword spotting is not running") as info:
        apply(SetKeywords(keywords=("stop",), id="k1"), target)
    assert (info.value.code, info.value.request_id) == ("unsupported", "k1")
    with pytest.raises(ControlError, match="translation is not running"):
        apply(SetTranslation(language="de"), target)
    translating = TranslatingTarget()
    apply(SetTranslation(language="de"), translating)
    assert translating.translation == "de"


# ------------------------------------------------------------------------ WAV frames


def test_decode_wav_reads_pcm_widths_and_channels() -> None:
    tone = (0.5 * np.sin(np.arange(512) / 5)).astype(np.float32)
    pcm16 = np.round(tone * 32767).astype("<i2")
    samples, rate = decode_wav(wav_bytes(pcm16, rate=22_050))
    assert rate == 22_050
    np.testing.assert_allclose(samples, tone, atol=1e-4)
    stereo = np.stack([pcm16, pcm16], axis=1)
    np.testing.assert_allclose(decode_wav(wav_bytes(stereo, channels=2))[0], tone, atol=1e-4)
    pcm8 = (np.round(tone * 127) + 128).astype(np.uint8)
    np.testing.assert_allclose(decode_wav(wav_bytes(pcm8, width=1))[0], tone, atol=1e-2)
    int24 = np.round(tone * (2**23 - 1)).astype(np.int32)
    packed = int24.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].copy()
    np.testing.assert_allclose(decode_wav(wav_bytes(packed, width=3))[0], tone, atol=1e-5)


@pytest.mark.parametrize(("payload", "why"), [
    (b"not a wav at all", "not a PCM WAV"),
    (b"", "not a PCM WAV"),
    (wav_bytes(np.zeros(0, dtype="<i2")), "no samples"),
    (wav_bytes(np.zeros(64, dtype="<i2"))[:-10], "truncated"),
    (wav_bytes(np.zeros(64, dtype="<i2"), rate=1000), "sample rate"),
])
def test_decode_wav_rejects_malformed_frames(payload: bytes, why: str) -> None:
    with pytest.raises(MalformedFrame, match=why):
        decode_wav(payload)


async def test_satellite_source_splits_sites_counts_malformed_and_keeps_a_clock_per_site(
        ) -> None:
    source = SatelliteSource(settings=MqttSettings(host="127.0.0.1"), client_id="t",
                             block_s=0.1)
    frame = wav_bytes(np.full(1024, 1000, dtype="<i2"))
    for _ in range(4):  # 4096 samples: 2 blocks of 1600 each, 896 pending
        source.on_frame("hermes/audioServer/kitchen/audioFrame", frame)
    source.on_frame("hermes/audioServer/hall/audioFrame", wav_bytes(
        np.full(2205, 1000, dtype="<i2"), rate=22_050))  # 0.1 s at 22.05 kHz
    source.on_frame("hermes/audioServer/hall/audioFrame", b"RIFF garbage")
    source.on_frame("hermes/audioServer/hall/playBytes", frame)  # not audio input: ignored
    source.stop()
    blocks = [b async for b in source.blocks()]
    kitchen = [b for b in blocks if b.stream == "kitchen"]
    assert [(b.start, b.end) for b in kitchen] == [(0, 1600), (1600, 3200), (3200, 4096)]
    hall = [b for b in blocks if b.stream == "hall"]
    assert hall[0].start == 0
    assert sum(len(b.samples) for b in hall) == 1600  # resampled, filter tail included
    assert source.malformed_frames == 1
    assert source.sites == ["kitchen", "hall"]


# ------------------------------------------------------------------ URLs and backoff


def test_parse_url_keeps_wildcards_and_rejects_passwords() -> None:
    url = parse_url("mqtts://alice@hub.local/hermes/audioServer/+/audioFrame")
    assert (url.host, url.port, url.tls, url.username) == ("hub.local", 8883, True, "alice")
    assert url.path == "hermes/audioServer/+/audioFrame"
    assert parse_url("mqtt://h:1999/sat/#").path == "sat/#"
    with pytest.raises(MqttConfigError, match="HARKEN_MQTT_PASSWORD"):
        parse_url("mqtt://alice:secret@hub")
    with pytest.raises(MqttConfigError, match="mqtt://"):
        parse_url("http://hub")


def test_settings_repr_and_address_never_show_the_password() -> None:
    settings = MqttSettings(host="hub", username="alice", password="s3cret-pw")
    assert "s3cret-pw" not in repr(settings)
    assert "s3cret-pw" not in settings.address


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(7)]
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays[3:])) == 4  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() <= 0.5


# ---------------------------------------------------------------- config and wiring


def test_cli_flags_reach_the_mqtt_config(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "run", "--input", "mqtt://hub:1884/hermes/audioServer/+/audioFrame",
        "--mqtt", "mqtts://bob@broker", "--site", "den", "--hermes", "--ha-discovery",
        "--mqtt-prefix", "home/harken", "--mqtt-ca", str(tmp_path / "ca.pem")])
    assert args.input == "mqtt://hub:1884/hermes/audioServer/+/audioFrame"  # not a Path
    mqtt = _load(args).config.mqtt
    assert (mqtt.url, mqtt.site, mqtt.hermes, mqtt.ha_discovery, mqtt.prefix) == \
        ("mqtts://bob@broker", "den", True, True, "home/harken")
    assert mqtt.ca_file == tmp_path / "ca.pem"
    plain = _load(build_parser().parse_args(["run", "--input", "x.wav"])).config.mqtt
    assert (plain.url, plain.hermes) == ("", False)  # absent flags do not override


@pytest.mark.parametrize(("field", "value"), [
    ("url", "http://broker"), ("site", "a/b"), ("prefix", "harken/#"), ("outbox_size", 0),
])
def test_bad_mqtt_settings_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        MqttConfig(**{field: value})


def test_password_precedence_file_then_env_then_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARKEN_MQTT_PASSWORD", raising=False)
    config = MqttConfig(password="from-config")
    assert resolve_password(config) == "from-config"
    monkeypatch.setenv("HARKEN_MQTT_PASSWORD", "from-env")
    assert resolve_password(config) == "from-env"
    secret = tmp_path / "pw"
    secret.write_text("from-file\nignored\n", encoding="utf-8")
    assert resolve_password(MqttConfig(password="x", password_file=secret)) == "from-file"
    with pytest.raises(ConfigError, match="cannot read the MQTT password file"):
        resolve_password(MqttConfig(password_file=tmp_path / "missing"))
    with pytest.raises(ConfigError, match="names no user"):
        settings_from_url("mqtt://broker", config)
    settings, _ = settings_from_url("mqtt://bob@broker", config)
    assert settings.password == "from-env"


def test_setup_defaults_results_to_the_satellites_broker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARKEN_MQTT_PASSWORD", raising=False)
    config = HarkenConfig(mqtt=MqttConfig(site="hub"))
    setup = MqttSetup(config, input_url="mqtt://sat-broker:1999/hermes/audioServer/+/audioFrame")
    assert setup.results is not None
    assert (setup.results.host, setup.results.port) == ("sat-broker", 1999)
    assert setup.sink_options.sites_from_streams
    assert setup.topic_filter == "hermes/audioServer/+/audioFrame"
    assert not MqttSetup(HarkenConfig()).enabled
    with pytest.raises(ConfigError, match="not a TLS URL"):
        MqttSetup(HarkenConfig(mqtt=MqttConfig(url="mqtt://b", ca_file=Path("ca.pem"))))
    with pytest.raises(ConfigError, match="topic filter"):
        MqttSetup(config, input_url="mqtt://b/sat/#/x")


def test_setup_passes_limits_keywords_and_allowed_sites(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARKEN_MQTT_PASSWORD", raising=False)
    config = HarkenConfig(
        mqtt=MqttConfig(site="hub", max_sites=3, allowed_sites=["kitchen", "hall"],
                        idle_evict_s=12, max_frames_per_s=50, max_bytes_per_s=64_000),
        keywords=KeywordsConfig(enabled=True, words=["stop", "go"]))
    setup = MqttSetup(config, input_url="mqtt://sat/hermes/audioServer/+/audioFrame")
    source = setup.source()
    assert isinstance(source, SatelliteSource)
    assert source.limits == SiteLimits(max_sites=3, allow=frozenset({"kitchen", "hall"}),
                                       idle_evict_s=12, max_frames_per_s=50,
                                       max_bytes_per_s=64_000)
    # HA keyword entities exist from the start; known satellites are announced at start.
    assert setup.sink_options.keywords == ("stop", "go")
    assert setup.sink_options.sites == ("kitchen", "hall")
    with pytest.raises(ValueError, match="one topic level"):
        MqttConfig(allowed_sites=["a/b"])


def test_insecure_tls_and_a_clear_text_password_are_warned_about(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HARKEN_MQTT_PASSWORD", "secret")
    with caplog.at_level("WARNING", logger="harken.app.mqtt"):
        setup = MqttSetup(HarkenConfig(mqtt=MqttConfig(url="mqtt://bob@hub.lan")))
        assert len(setup.warnings) == 1
        assert "unencrypted" in setup.warnings[0]
        assert "allow_plaintext_password" in setup.warnings[0]
        insecure = MqttSetup(HarkenConfig(mqtt=MqttConfig(url="mqtts://bob@hub.lan",
                                                          tls_insecure=True)))
        assert len(insecure.warnings) == 1
        assert "not checked" in insecure.warnings[0]
        # Acknowledged, over TLS, or to this machine: nothing to say.
        for mqtt in (MqttConfig(url="mqtt://bob@hub.lan", allow_plaintext_password=True),
                     MqttConfig(url="mqtts://bob@hub.lan"), MqttConfig(url="mqtt://bob@localhost")):
            assert MqttSetup(HarkenConfig(mqtt=mqtt)).warnings == []
    assert len(caplog.records) == 2
    assert all("secret" not in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------ outbox without a broker


class Unknown(Event):
    type: ClassVar[str] = "custom"


async def test_outbox_is_bounded_and_partials_are_never_queued_while_offline() -> None:
    """No broker listens: finals fill the bounded outbox (oldest dropped, counted), partials
    are dropped at once, and the sink still drains its subscription at full speed."""
    sink = MqttSink(settings=MqttSettings(host="127.0.0.1", port=free_port()),
                    options=MqttSinkOptions(site="den", outbox_size=5, drain_timeout_s=0.0,
                                            backoff_initial_s=0.05, backoff_max_s=0.1,
                                            partial_interval_s=0.0))
    bus = EventBus()
    sub = bus.subscribe("mqtt", maxsize=4)  # small: a sink that blocked would stall publish
    consume = asyncio.create_task(sink.consume(sub))
    for i in range(12):
        await bus.publish(CaptionPartial(stream="mic", start=i, end=i + 0.5, segment=i,
                                         text="par"))
        await bus.publish(CaptionFinal(stream="mic", start=i, end=i + 1, segment=i,
                                       text=f"final {i}"))
    await bus.close()
    await asyncio.wait_for(consume, timeout=10)
    assert not sink.connected
    assert sink.connect_failures >= 1
    assert sink.qos0_dropped + sub.dropped == 12  # the bus may replace a queued partial
    assert sink.outbox_dropped == 12 - 5
    assert sink.undelivered == 5


def test_ha_discovery_has_no_speaker_entity_without_diarization() -> None:
    configs = ha_discovery(TOPICS, availability="harken/den/status", speakers=False)
    assert [c.topic for c in configs] == ["homeassistant/sensor/harken_den/last_caption/config"]
