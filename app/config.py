"""Configuration: defaults < TOML file < HARKEN_* environment < command-line flags.

pydantic-settings parses the TOML file and the environment (its own sources, called
directly so that `harken config show` can say where each value came from); the merged
values are validated once by the pydantic models below.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from harken.engine.memory import HEAP_TRIM_INTERVAL_S
from harken.engine.sources.blocks import MAX_BLOCK_S, MIN_BLOCK_S
from harken.models.errors import ConfigError, SettingsError

ENV_PREFIX = "HARKEN_"
ENV_NESTED = "__"
#: HARKEN_* variables that are not settings: the config file, tracebacks, the broker
#: password (app/mqtt.py) and the dev tests' real-speech folder (tests/oracle_diarization.py)
ENV_OTHER = frozenset({"HARKEN_CONFIG", "HARKEN_DEBUG", "HARKEN_MQTT_PASSWORD",
                       "HARKEN_SHARED_AUDIO"})
#: error lines shown at most, then one "... and N more" line: a file of 5,000 bad keys
#: must not flood the terminal
MAX_ERROR_LINES = 20
#: characters of a key or value echoed in an error at most (then an ellipsis)
MAX_ECHO_CHARS = 80
DEFAULT_CAPTIONS_MODEL = "facebook/hubert-large-ls960-ft"
SECRET_KEYS = frozenset({"password"})
DEFAULT_KEYWORDS_MODEL = "anton-l/sew-d-mid-400k-ft-keyword-spotting"
DEFAULT_TRANSLATION_MODEL = "facebook/wav2vec2-xls-r-300m-en-to-15"
DEFAULT_SPEAKER_MODEL = "microsoft/unispeech-sat-base-plus-sv"
DEFAULT_DIARIZATION_MODEL = "microsoft/unispeech-sat-base-plus-sd"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComputeConfig(_Section):
    device_type: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="auto: float16 on CUDA, float32 on CPU")
    max_batch: int = Field(16, ge=1, le=256, description="windows per forward pass")
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="auto: int8 (dynamic, Linear layers) on CPU, fp32 on CUDA; "
        "fp32: no quantisation")
    inference_threads: int = Field(
        0, ge=0, le=256, description="torch threads of the inference worker; 0: auto "
        "(docs/cpu.md)")
    generation_threads: int = Field(
        0, ge=0, le=256, description="torch threads of the translation thread; 0: auto")
    heap_trim_s: float = Field(
        HEAP_TRIM_INTERVAL_S, ge=0, le=3600, description="seconds between returns of freed "
        "heap memory to the OS (glibc; engine/memory.py); 0: never, else at least 1 "
        "(each trim costs CPU)")

    @field_validator("heap_trim_s")
    @classmethod
    def _trim(cls, v: float) -> float:
        if 0 < v < 1:
            raise ValueError("must be 0 (never) or at least 1 second: back-to-back trims "
                             "cost CPU for no memory")
        return v

    @field_validator("device_type")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda or cuda:N")


class AudioConfig(_Section):
    device: str = Field("", description="input device index or name; empty: the default")
    # The range every source accepts (engine/sources/blocks.py check_block_s).
    block_s: float = Field(0.1, ge=MIN_BLOCK_S, le=MAX_BLOCK_S,
                           description="seconds per capture block")


class VadConfig(_Section):
    engine: Literal["webrtc", "silero", "both"] = Field(
        "both", description="webrtc, silero, or both: webrtcvad onsets confirmed by silero")
    frame_ms: Literal[10, 20, 30] = 30
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode, 3 = most strict")
    pre_roll_s: float = Field(0.2, ge=0, le=2, description="audio kept before an onset")
    hangover_s: float = Field(0.3, ge=0, le=5, description="silence that ends a segment")
    min_speech_s: float = Field(0.25, ge=0, le=5, description="shorter bursts are ignored")
    max_segment_s: float = Field(15.0, ge=2, le=120, description="longer speech is split")
    split_search_s: float = Field(2.0, ge=0.1, le=10, description="where to look for a split")
    speech_threshold: float = Field(0.5, gt=0, lt=1,
                                    description="silero probability that starts speech")
    release_threshold: float = Field(0.2, gt=0, lt=1,
                                     description="silero probability below which speech stops")
    threads: int = Field(0, ge=0, le=64, description="threads running the streams' VADs off "
                         "the event loop (0: on the loop); for many satellite streams")

    @model_validator(mode="after")
    def _thresholds(self) -> VadConfig:
        if self.max_segment_s <= self.split_search_s:
            raise ValueError(f"max_segment_s ({self.max_segment_s}) must be longer than "
                             f"split_search_s ({self.split_search_s}), where a long segment "
                             "is split")
        if self.release_threshold > self.speech_threshold:
            raise ValueError(f"release_threshold ({self.release_threshold}) must not exceed "
                             f"speech_threshold ({self.speech_threshold})")
        return self


class CaptionsConfig(_Section):
    model: str = Field(DEFAULT_CAPTIONS_MODEL, description="hub id or local folder (CTC)")
    hop_s: float = Field(0.5, gt=0.05, le=5, description="seconds between partial updates")
    left_context_s: float = Field(2.0, ge=0, le=60, description="re-encoded left context")
    right_context_s: float = Field(0.5, ge=0, le=10,
                                   description="context a frame needs to become final")


class OutputConfig(_Section):
    dir: Path = Field(Path("."), description="folder for transcript files")
    formats: list[str] = Field(default_factory=lambda: ["srt", "vtt", "jsonl", "txt"])
    overwrite: bool = Field(False, description="replace output files that exist; off: refuse, "
                            "so a reference transcript or an earlier run is never lost")

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        allowed = ("srt", "vtt", "jsonl", "txt", "rttm")
        if not v:  # would write nothing, in silence
            raise ValueError(f"give at least one format from {', '.join(allowed)}")
        bad = [f for f in v if f not in allowed]
        if bad:
            raise ValueError(f"unknown format(s) {bad}; choose from {', '.join(allowed)}")
        return v


class MqttConfig(_Section):
    """MQTT results, control and satellite audio (docs/mqtt.md)."""

    url: str = Field("", description="broker: mqtt://[user@]host[:port], mqtts://... or "
                                     "'embedded'; empty: no MQTT")
    password: SecretStr | None = Field(None, description="broker password (also "
                                       "HARKEN_MQTT_PASSWORD or password_file); never shown")
    password_file: Path | None = Field(None, description="file whose first line is the "
                                       "broker password")
    ca_file: Path | None = Field(None, description="CA that signed the broker's certificate "
                                 "(mqtts://); default: the system CAs")
    cert_file: Path | None = Field(None, description="client certificate, if the broker "
                                   "requires one")
    key_file: Path | None = Field(None, description="client certificate key")
    tls_insecure: bool = Field(False, description="skip server certificate checks (tests "
                               "only)")
    prefix: str = Field("harken", description="topic prefix: <prefix>/<site>/...")
    site: str = Field("", description="site id; empty: the host name")
    hermes: bool = Field(False, description="also publish Hermes (Rhasspy) topics")
    ha_discovery: bool = Field(False, description="announce Home Assistant entities")
    ha_prefix: str = Field("homeassistant", description="Home Assistant discovery prefix")
    outbox_size: int = Field(1000, ge=1, le=1_000_000,
                             description="QoS 1 messages kept while the broker is away")
    partial_interval_s: float = Field(0.25, ge=0, le=10,
                                      description="at most one partial per stream this often")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    embedded_host: str = Field("127.0.0.1", description="--mqtt embedded: listen address "
                               "(0.0.0.0 for other machines)")
    embedded_port: int = Field(1883, ge=0, le=65535, description="--mqtt embedded: port "
                               "(0: a free one)")
    allow_plaintext_password: bool = Field(False, description="send the password over "
                                           "plain mqtt:// to another machine without a "
                                           "warning (prefer mqtts://)")
    max_sites: int = Field(16, ge=1, le=1024, description="satellites streaming at once; "
                           "new sites beyond are refused until one goes idle")
    allowed_sites: list[str] = Field(default_factory=list, description="satellite site ids "
                                     "that may stream (announced to Home Assistant at "
                                     "start); empty: any")
    idle_evict_s: float = Field(30.0, ge=2, le=86_400, description="a satellite silent this "
                                "long is evicted: its segment ends, its state is freed")
    forget_evicted_sites: bool = Field(True, description="when a satellite not in "
                                       "allowed_sites is evicted, clear its retained Home "
                                       "Assistant configs and state (it is announced "
                                       "again on its next caption)")
    own_subscriptions: bool = Field(True, description="without allowed_sites: subscribe "
                                    "to each admitted satellite's own topic on a second "
                                    "connection, so a flood under made-up site names cannot "
                                    "crowd it out (docs/mqtt.md); false: the wildcard only")
    max_frames_per_s: float = Field(200.0, gt=0, le=100_000, description="audio frames per "
                                    "second one satellite may send")
    max_bytes_per_s: float = Field(1_000_000.0, gt=0, le=1e9, description="audio bytes per "
                                   "second one satellite may send")
    max_audio_ratio: float = Field(2.0, ge=1, le=100, description="seconds of audio per "
                                   "second one satellite may send (real time is 1)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v in ("", "embedded") or v.startswith(("mqtt://", "mqtts://")):
            return v
        raise ValueError("must be mqtt://[user@]host[:port], mqtts://..., 'embedded' or empty")

    @field_validator("prefix", "ha_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or v.startswith(("/", "$")) or v.endswith("/") or "//" in v or \
                any(c in v for c in "+#"):
            raise ValueError("must be a plain topic prefix such as 'harken' (no '+', '#', "
                             "leading '/' or '$', trailing '/')")
        return v

    @field_validator("allowed_sites")
    @classmethod
    def _sites(cls, v: list[str]) -> list[str]:
        for site in v:
            if not site:
                raise ValueError("site ids must not be empty")
            _check_site(site)
        return v

    @field_validator("site")
    @classmethod
    def _site(cls, v: str) -> str:
        return _check_site(v)


def _check_site(v: str) -> str:
    if any(c in v for c in "+#/") or v != v.strip() or v.startswith("$"):
        raise ValueError(f"{v!r} must be one topic level: no '+', '#', '/', leading '$' or "
                         "surrounding spaces")
    return v


class KeywordsConfig(_Section):
    """Keyword spotting (docs/keywords.md)."""

    enabled: bool = Field(False, description="spot keywords (harken run --keywords)")
    model: str = Field(DEFAULT_KEYWORDS_MODEL, description="hub id or local folder "
                       "(audio classification)")
    words: list[str] = Field(default_factory=list, description="keywords to spot; empty: "
                             "every keyword label of the model")
    threshold: float = Field(0.8, gt=0, le=1, description="probability a window needs")
    thresholds: dict[str, float] = Field(default_factory=dict,
                                         description="per-keyword thresholds")
    patience: int = Field(2, ge=1, le=50, description="windows in a row above threshold")
    refractory_s: float = Field(1.0, ge=0, le=60, description="quiet time after a hit")
    window_s: float = Field(1.0, ge=0.1, le=10, description="window length (the model's "
                            "clip length)")
    hop_s: float = Field(0.2, ge=0.01, le=10, description="seconds between windows")
    min_speech_s: float = Field(0.5, gt=0, le=10, description="speech a window must contain")

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: t for k, t in v.items() if not 0 < t <= 1}
        if bad:
            raise ValueError(f"thresholds must be above 0 and at most 1, got {bad}")
        return v


class TranslationConfig(_Section):
    """Live translation (docs/translation.md)."""

    languages: list[str] = Field(default_factory=list, description="target languages "
                                 "(ISO codes such as de, fr); empty: no translation")
    model: str = Field(DEFAULT_TRANSLATION_MODEL, description="hub id or local folder "
                       "(speech encoder-decoder)")
    num_beams: int = Field(1, ge=1, le=16, description="beam search width (1: greedy)")
    max_new_tokens: int = Field(96, ge=1, le=1024, description="tokens per segment at most "
                                "(short segments: 12 a second + 16, docs/translation.md)")
    language_tokens: dict[str, str] = Field(default_factory=dict, description="code -> "
                                            "language token, for tokens that are not "
                                            "mBART-50 style")


class RefineConfig(_Section):
    """Two-pass captions: each CTC final re-decoded by a sequence-to-sequence model
    (docs/refine.md)."""

    model: str = Field("auto", description="AutoModelForSpeechSeq2Seq checkpoint (Whisper...): "
                       "hub id or local folder; auto: openai/whisper-large-v3-turbo on CUDA, "
                       "none on CPU; none: no refinement (--refine-model)")
    language: str = Field("en", min_length=1, description="language forced on the model")
    max_wait_s: float = Field(3.0, ge=0, le=60, description="live subtitle/transcript files "
                              "wait this long for a refinement, then keep the CTC text")
    pad_before_s: float = Field(0.0, ge=0, le=2, description="s of audio before each "
                                "segment's start also given to the refine model")
    pad_after_s: float = Field(0.0, ge=0, le=2, description="s of audio after each segment's "
                               "end also given to the refine model (its result waits that long)")
    join_short_s: float = Field(3.0, ge=0, le=10, description="a segment shorter than this "
                                "that follows the previous one without a pause is decoded "
                                "together with it (0: never)")
    guard: bool = Field(True, description="reject refinements that disagree with the CTC "
                        "text (hallucinations)")
    max_cer: float = Field(0.5, gt=0, le=10, description="guard: reject above this character "
                           "error rate against the CTC text")
    max_repeats: int = Field(3, ge=1, le=50, description="guard: reject a phrase repeated "
                             "more often in a row (unless the CTC heard it too)")
    num_beams: int = Field(1, ge=1, le=16, description="beam search width (1: greedy)")
    max_new_tokens: int = Field(160, ge=1, le=1024, description="tokens per 30 s piece at "
                                "most")
    encoder_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Whisper's encoder dtype; auto: bfloat16 on a CPU with native "
        "bfloat16 (same transcripts, a third less CPU: docs/refine.md), else the model's")


def _bounded(low: float, high: float, *, above: bool = False) -> Any:
    """A calibrated threshold: empty (None) or a number in [low, high] ((low, high] if
    `above`)."""
    return Field(None, gt=low, le=high) if above else Field(None, ge=low, le=high)


class ModelCalibration(_Section):
    """Thresholds for one model (`[speakers.calibration."MODEL"]`, written by `harken tune`).

    tau_active and rho_update belong under the diarization (segmentation) model, delta_new,
    threshold and margin under the speaker model (models/calibration.py)."""

    tau_active: float | None = _bounded(0, 1)
    rho_update: float | None = _bounded(0, 1)
    delta_new: float | None = _bounded(0, 2, above=True)
    threshold: float | None = _bounded(-1, 1)
    margin: float | None = _bounded(0, 2)


class SpeakersConfig(_Section):
    """Diarization, speaker identification and enrollment (docs/speakers.md).

    The five thresholds are empty by default: each is then taken from your calibration of
    the model (`calibration`), else from Harken's table of known checkpoints, else from
    the generic default (models/calibration.py). A value set here wins over all of them."""

    enabled: bool = Field(False, description="label captions with speakers (--diarize)")
    model: str = Field(DEFAULT_SPEAKER_MODEL, description="x-vector speaker model: hub id "
                       "or local folder (--speaker-model)")
    diarization_model: str = Field(DEFAULT_DIARIZATION_MODEL, description="frame-"
                                   "classification segmentation model (--diarization-model)")
    threshold: float | None = Field(None, ge=-1, le=1, description="cosine similarity to "
                                    "name an enrolled speaker / accept in verify; empty: "
                                    "calibrated per model (`harken tune speakers`)")
    margin: float | None = Field(None, ge=0, le=2, description="similarity an identified "
                                 "voice needs over the second-best enrolled voice; empty: "
                                 "per model")
    store: Path | None = Field(None, description="voiceprint database; empty: "
                               "voiceprints.sqlite in the user data dir")
    window_s: float = Field(5.0, ge=1, le=30, description="speech each analysis sees")
    step_s: float = Field(0.5, ge=0.1, le=5, description="new speech between analyses")
    latency_s: float | None = Field(None, description="when a frame becomes final, between "
                                    "step_s and window_s; empty: step_s")
    tau_active: float | None = Field(None, ge=0, le=1, description="peak activity of an "
                                     "active local speaker; empty: per model")
    rho_update: float | None = Field(None, ge=0, le=1, description="mean activity to create "
                                     "or update a speaker; empty: per model")
    delta_new: float | None = Field(None, gt=0, le=2, description="cosine distance beyond "
                                    "which a voice is a new speaker; empty: per model")
    max_speakers: int = Field(20, ge=1, le=100, description="anonymous speakers alive at most")
    retire_after_s: float = Field(1800.0, ge=60, le=7 * 86400, description="speech time after "
                                  "which an unheard anonymous speaker is retired (its label is "
                                  "never reused)")
    min_turn_s: float = Field(0.1, ge=0, le=10, description="shorter turns are dropped")
    merge_gap_s: float = Field(0.2, ge=0, le=10, description="shorter pauses stay in a turn")
    calibration: dict[str, ModelCalibration] = Field(
        default_factory=dict, description="model id -> thresholds (`harken tune` writes them)")

    @model_validator(mode="after")
    def _latency(self) -> SpeakersConfig:
        if self.step_s > self.window_s:
            raise ValueError(f"step_s ({self.step_s}) must not exceed window_s "
                             f"({self.window_s})")
        if self.latency_s is not None and not self.step_s <= self.latency_s <= self.window_s:
            raise ValueError(f"latency_s ({self.latency_s}) must lie between step_s "
                             f"({self.step_s}) and window_s ({self.window_s})")
        return self


class HarkenConfig(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    captions: CaptionsConfig = Field(default_factory=CaptionsConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    keywords: KeywordsConfig = Field(default_factory=KeywordsConfig)
    translation: TranslationConfig = Field(default_factory=TranslationConfig)
    refine: RefineConfig = Field(default_factory=RefineConfig)
    speakers: SpeakersConfig = Field(default_factory=SpeakersConfig)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_config() merges the sources itself (to track origins); validate that only.
        return (init_settings,)


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("harken")) / "config.toml"


@dataclass(frozen=True)
class LoadedConfig:
    config: HarkenConfig
    #: dotted key -> "default" | "file PATH" | "env NAME" | "flag --NAME"
    origins: dict[str, str]
    path: Path | None


def _deep_merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _part(key: object) -> str:
    text = str(key)
    return f'"{text}"' if any(c in text for c in './ "') else text


def _items(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf; a key with dots (a model id) is quoted as TOML
    writes it, e.g. speakers.calibration."org/model-v1.5".threshold."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}{_part(key)}"
        out.extend(_items(value, dotted + ".") if isinstance(value, dict)
                   else [(dotted, value)])
    return out


def _leaves(data: dict[str, Any], prefix: str = "") -> list[str]:
    return [key for key, _ in _items(data, prefix)]


def _paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key path of every leaf, e.g. ("keywords", "thresholds", "yes")."""
    out: list[tuple[str, ...]] = []
    for key, value in data.items():
        path = (*prefix, str(key))
        out.extend(_paths(value, path) if isinstance(value, dict) else [path])
    return out


def env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", ENV_NESTED).upper()


def printable(text: str) -> str:
    """`text` with control and format characters (newlines, carriage returns, line
    separators, ANSI escapes, bidi marks) escaped as repr escapes them: a key or path a user
    wrote can neither break an error line in two nor reach the terminal raw."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    return repr(ch)[1:-1]  # "\\n", "\\x1b", "\\u2028"


def _echo(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """A user-written key or value for an error line: escaped, and cut with an ellipsis
    beyond `limit` characters."""
    text = printable(text[:limit * 4 + 1])  # escapes only make it longer
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The settings model whose fields live at `loc` (() is the top level; a table of
    models such as speakers.calibration skips its key), or None if none does."""
    model: type[BaseModel] = HarkenConfig
    expect_key = False
    for part in loc:
        if expect_key:
            expect_key = False
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        kind = field.annotation
        if typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
            expect_key = True
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return None
        model = kind
    return None if expect_key else model


def _closest_key(loc: tuple[str, ...]) -> str:
    """'; did you mean captions.hop_s?' for a misspelt setting, else ''. Only the keys
    valid at that place are offered: a section for a section, a setting of the same
    section for a setting."""
    model = _model_at(loc[:-1])
    if model is None or len(loc[-1]) > 4 * MAX_ECHO_CHARS:
        return ""
    parent = "".join(_part(p) + "." for p in loc[:-1])
    known = [parent + name for name in model.model_fields]
    key = parent + _part(loc[-1])
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if match:
        return f"; did you mean {match[0]}?"
    # A setting written outside its section (`hop_s = 1` at the top of a file).
    homes = [home for home in _sections_with(loc[-1]) if home != loc[:-1]]
    return "; did you mean " + " or ".join(
        f"{'.'.join(home)}.{loc[-1]} (under [{'.'.join(home)}])" for home in homes[:3]
    ) + "?" if homes else ""


def _sections_with(name: str, model: type[BaseModel] = HarkenConfig,
                   at: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The sections (and their sub-sections, not tables) that have a setting `name`."""
    found = [at] if at and name in model.model_fields else []
    for field_name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found += _sections_with(name, kind, (*at, field_name))
    return found


def _flag_name(key: str, names: dict[str, str]) -> str:
    """The flag that set `key`, also for a leaf under a table flag: --keywords yes:0.9 sets
    keywords.thresholds.yes through keywords.thresholds."""
    for dotted, flag in names.items():
        if key == dotted or key.startswith(dotted + "."):
            return flag
    return key


def _env_origin(path: tuple[str, ...], environ: dict[str, str]) -> str:
    """The variable that set the leaf at `path`: the leaf's own (HARKEN_VAD__HANGOVER_S) or
    the one holding a JSON table around it (HARKEN_KEYWORDS__THRESHOLDS='{"yes": 0.9}')."""
    for end in range(len(path), 0, -1):
        name = (ENV_PREFIX + ENV_NESTED.join(path[:end])).upper()
        if name in environ:
            return environ[name]
    return env_name(".".join(path))


def _bad_env_names(exc: ValueError) -> tuple[str, str]:
    """The HARKEN_* variables of the section pydantic-settings could not parse (its message
    names only the section, e.g. `field "translation"`), and how one of them is written as
    JSON: the user's own variable when there is one, its comma-separated items as a list."""
    section = str(exc).partition('field "')[2].partition('"')[0]
    prefix = f"{ENV_PREFIX}{section.upper()}{ENV_NESTED}" if section else ENV_PREFIX
    found = sorted(name for name in os.environ if name.upper().startswith(prefix))
    example = "HARKEN_TRANSLATION__LANGUAGES='[\"de\"]'"
    if len(found) == 1:
        items = [item.strip() for item in os.environ[found[0]].split(",") if item.strip()]
        example = f"{printable(found[0])}='{printable(json.dumps(items))}'"
    names = " or ".join(printable(name) for name in found) or "a HARKEN_* environment variable"
    return names, example


def _unknown_env() -> list[str]:
    """One line per HARKEN_* variable that is neither a setting's (HARKEN_SECTION__KEY, or
    HARKEN_SECTION holding the section as JSON) nor one of ENV_OTHER: pydantic-settings
    skips those in silence, so a misspelt section would leave its value unused. Misspelt
    keys of a known section are caught by validation."""
    sections = list(HarkenConfig.model_fields)
    lines = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in ENV_OTHER:
            continue
        section, nested, rest = upper.removeprefix(ENV_PREFIX).partition(ENV_NESTED)
        if section.lower() in sections:
            continue
        if nested:
            close = difflib.get_close_matches(section.lower(), sections, n=1, cutoff=0.6)
            hint = f"{ENV_PREFIX}{close[0].upper()}{ENV_NESTED}{rest}" if close else ""
        else:  # HARKEN_MQTT_PASWORD, or HARKEN_CAPTIONS_HOP_S (one underscore too few)
            close = difflib.get_close_matches(upper, sorted(ENV_OTHER), n=1, cutoff=0.8)
            hint = close[0] if close else next(
                (f"{ENV_PREFIX}{s.upper()}{ENV_NESTED}{section[len(s) + 1:]}"
                 for s in sections if section.startswith(s.upper() + "_")), "")
        fix = f"did you mean {_echo(hint)}?" if hint else \
            f"settings are {ENV_PREFIX}SECTION{ENV_NESTED}KEY with a section of " \
            f"{', '.join(sections)}"
        lines.append(f"environment variable {_echo(name)}: no such setting section; {fix} "
                     "(or unset it)")
    return lines


def _subject(key: str, where: str) -> str:
    """The setting as the user wrote it: the flag, the variable or the file's key."""
    key = _echo(key)
    kind, _, name = where.partition(" ")
    if kind == "flag":
        return f"{name} ({key})"
    if kind == "env":
        return f"environment variable {printable(name)} ({key})"
    if kind == "file":
        return f"{key} in {printable(name)}"
    return key


def _where(key: str, origins: dict[str, str]) -> str:
    """Where the user set the keys under a section or table (a cross-field or unknown-key
    problem): the one origin as it is, or every file, variable and flag, e.g. "from c.toml
    and environment variable HARKEN_VAD__MAX_SEGMENT_S"."""
    found = list(dict.fromkeys(o for k, o in origins.items() if k.startswith(key + ".")))
    if len(found) <= 1:
        return found[0] if found else "default"
    parts = []
    for where in found:
        kind, _, name = where.partition(" ")
        parts.append(f"environment variable {printable(name)}" if kind == "env"
                     else printable(name))
    return "from " + ", ".join(parts[:-1]) + " and " + parts[-1]


def _problem(err: Any, origins: dict[str, str]) -> str:
    """One pydantic error as one line: the key, where its value came from, what is
    expected."""
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(_part(p) for p in loc)
    # A list item (mqtt.allowed_sites.1) has no origin of its own: its list's is the one.
    where = next((origins[k] for end in range(len(loc), 0, -1)
                  if (k := ".".join(_part(p) for p in loc[:end])) in origins), None) \
        or _where(key, origins)
    subject = f"{_echo(key)} ({where})" if where.startswith("from ") else _subject(key, where)
    got = f" is {_echo(repr(err['input']))}" if "input" in err and \
        not isinstance(err["input"], dict) else ""
    if err["type"] == "extra_forbidden":
        fix = _closest_key(loc) or "; remove it (`harken config show` lists every setting)"
        return f"{subject}: no such setting{fix}"
    message: str = err["msg"].removeprefix("Value error, ")
    if message.startswith("Input should"):
        message = "must" + message.removeprefix("Input should")
    # A validator's message may echo values (a table of thresholds): keep its start, where
    # the rule is, and its end.
    message = printable(message)
    if len(message) > 4 * MAX_ECHO_CHARS:
        message = message[:3 * MAX_ECHO_CHARS] + " … " + message[-MAX_ECHO_CHARS // 2:]
    return f"{subject}{got}: {message}"


def _capped(problems: Sequence[Any], line: Callable[[Any], str]) -> list[str]:
    """The first MAX_ERROR_LINES problems, one line each, then how many more there are."""
    lines = [line(p) for p in problems[:MAX_ERROR_LINES]]
    if len(problems) > MAX_ERROR_LINES:
        lines.append(f"... and {len(problems) - MAX_ERROR_LINES} more problems like these")
    return lines


def load_config(path: Path | None = None, *, flags: dict[str, Any] | None = None,
                flag_names: dict[str, str] | None = None) -> LoadedConfig:
    """Builds the effective configuration.

    path: TOML file; None means $HARKEN_CONFIG or the default path (used only if it exists).
    flags: nested dict of values given on the command line, e.g. {"captions": {"hop_s": 1}}.
    flag_names: dotted key -> flag spelling, for messages and `config show`.
    """
    explicit = path is not None or "HARKEN_CONFIG" in os.environ
    if path is None:
        path = Path(os.environ["HARKEN_CONFIG"]) if "HARKEN_CONFIG" in os.environ \
            else default_config_path()
    shown = printable(str(path))
    if explicit and not path.is_file():
        raise ConfigError(f"config file {shown} does not exist (or is not a file); create it "
                          "or leave out --config / HARKEN_CONFIG to use the defaults")
    used_path = path if path.is_file() else None

    file_data: dict[str, Any] = {}
    if used_path is not None:
        try:
            file_data = TomlConfigSettingsSource(HarkenConfig, toml_file=used_path)()
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{shown} is not valid TOML: {printable(str(exc))}. Fix the "
                              "file (see the configuration reference in the README)") from exc
        except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition
            raise ConfigError(f"config file {shown} is not UTF-8 text (byte {exc.start} "
                              "cannot be read); save it as UTF-8") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {shown}: "
                              f"{printable(str(exc))}") from exc
    unknown = _unknown_env()  # reported with the settings' own problems, all at once
    try:
        env_data = EnvSettingsSource(HarkenConfig, env_prefix=ENV_PREFIX,
                                     env_nested_delimiter=ENV_NESTED)()
    except ValueError as exc:  # e.g. a HARKEN_*__FORMATS value that is not JSON
        bad, example = _bad_env_names(exc)
        raise ConfigError(f"{bad}: a list or table value that is not JSON; write it as "
                          f"JSON, e.g. {example}") from exc
    env_data.pop("config", None)
    flag_data = flags or {}
    names = flag_names or {}
    # pydantic-settings reads the variables whatever their case: the name as the user wrote it
    environ = {name.upper(): name for name in os.environ}

    origins: dict[str, str] = {}
    merged: dict[str, Any] = {}
    for label, data in ((f"file {used_path}", file_data), ("env", env_data), ("flag", flag_data)):
        _deep_merge(merged, data)
        for parts in _paths(data):
            key = ".".join(_part(p) for p in parts)
            if label == "env":
                origins[key] = f"env {_env_origin(parts, environ)}"
            elif label == "flag":
                origins[key] = f"flag {_flag_name(key, names)}"
            else:
                origins[key] = label
    try:
        config = HarkenConfig(**merged)
    except ValidationError as exc:
        # One self-contained line per problem: the CLI prints each as its own error line.
        problems = [*unknown, *exc.errors()]
        raise SettingsError(_capped(problems, lambda p: p if isinstance(p, str)
                                    else _problem(p, origins))) from exc
    if unknown:
        raise SettingsError(_capped(unknown, str))
    for key in _leaves(config.model_dump()):
        origins.setdefault(key, "default")
    return LoadedConfig(config=config, origins=origins, path=used_path)


def describe(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(dotted key, value, origin) for every setting, for `harken config show`."""
    rows: list[tuple[str, Any, str]] = []
    for key, value in _items(loaded.config.model_dump(mode="json")):
        if value is not None and key.rsplit(".", 1)[-1] in SECRET_KEYS:
            value = "***"  # secrets are never printed
        rows.append((key, value, loaded.origins.get(key, "default")))
    return rows
