"""The control topic `<prefix>/<site>/set`: JSON commands, parsed and applied.

Command schema (version 1), one JSON object per message; `id` is optional and echoed back:

    {"command": "pause"}                                   stop listening (audio -> silence)
    {"command": "resume"}
    {"command": "keywords", "keywords": ["lights on"]}     replace the keyword list
    {"command": "translation", "language": "de"}           translate to `de`; null stops

The bare words `pause` and `resume` are accepted too (handy with mosquitto_pub).
`parse_command` never touches the engine; `apply` calls the target only for a command that
parsed and that the target supports. Anything else raises ControlError, which the sink
answers on `<prefix>/<site>/error`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from harken.engine.pipeline import REMOTE, Pausable
from harken.models.errors import ControlError

MAX_COMMAND_BYTES = 4096
MAX_KEYWORDS = 64
MAX_KEYWORD_CHARS = 64
MAX_ID_CHARS = 64  # characters of a request id echoed back
MAX_NAME_CHARS = 32  # characters of an unknown command or field name echoed back
COMMANDS = ("pause", "resume", "keywords", "translation")
_LANGUAGE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")
KEYWORDS_NOT_RUNNING = ("keyword spotting is not running in this Harken session, so there is "
                        "no keyword list to change; start Harken with the keyword task enabled")
TRANSLATION_NOT_RUNNING = ("live translation is not running in this Harken session; start "
                           "Harken with the translation task enabled")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetKeywords:
    keywords: tuple[str, ...]
    id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTranslation:
    language: str | None  # None: stop translating
    id: str | None = None


Command = Pause | Resume | SetKeywords | SetTranslation


@runtime_checkable
class KeywordControl(Protocol):
    """A target whose keyword spotter can take a new keyword list.

    It raises ControlError for a list it cannot apply (code `invalid_argument`, or
    `unsupported` while the task is not running) and then changes nothing.
    """

    def set_keywords(self, keywords: Sequence[str]) -> None: ...


@runtime_checkable
class TranslationControl(Protocol):
    """A target whose translator can switch (or stop, with None) its target language;
    raises ControlError like KeywordControl."""

    def set_translation(self, language: str | None) -> None: ...


@runtime_checkable
class ControlledSink(Protocol):
    """A sink with a control topic (MqttSink): the session binds it to itself."""

    def bind(self, control: Pausable) -> None: ...


def _name(data: dict[str, Any]) -> str | None:
    value = data.get("command")
    return value if isinstance(value, str) else None


def parse_command(payload: bytes) -> Command:
    """One command from a message payload; raises ControlError (and nothing else) with a
    fix in its message, whatever the payload holds: it comes from anyone on the broker."""
    try:
        return _parse(payload)
    except ControlError:
        raise
    except Exception as exc:  # untrusted bytes: any other failure is a bad command too
        raise ControlError(f"command could not be read ({type(exc).__name__}); send a JSON "
                           'object such as {"command": "pause"}', code="invalid_json") from exc


def _parse(payload: bytes) -> Command:
    if len(payload) > MAX_COMMAND_BYTES:
        raise ControlError(f"command is {len(payload)} bytes; the limit is "
                           f"{MAX_COMMAND_BYTES}", code="too_large")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ControlError("command is not UTF-8 text; send a JSON object such as "
                           '{"command": "pause"}', code="invalid_json") from exc
    if text in ("pause", "resume"):
        return Pause() if text == "pause" else Resume()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ControlError(f"command is not valid JSON ({exc.msg} at character {exc.pos}); "
                           'send e.g. {"command": "pause"}', code="invalid_json") from exc
    except (RecursionError, ValueError) as exc:
        # RecursionError: "[[[[..." nested past the interpreter's limit; ValueError: an
        # integer longer than Python's digit limit.
        raise ControlError("command is nested too deeply or holds a number too long; send a "
                           'flat JSON object such as {"command": "pause"}',
                           code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ControlError('command must be a JSON object such as {"command": "pause"}',
                           code="invalid_command")
    request_id = _request_id(data.get("id"))
    name = _name(data)
    if name is None:
        raise ControlError('command has no "command" field; use one of '
                           f"{', '.join(COMMANDS)}", code="invalid_command",
                           request_id=request_id)
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS] + "..."  # it is echoed back: keep the answer small
    unknown = sorted(set(data) - {"command", "id", "keywords", "language"})
    if unknown:
        shown = [u[:MAX_NAME_CHARS] for u in unknown[:5]]
        raise ControlError(f"unknown field(s) {shown} in {name!r} command",
                           code="invalid_argument", command=name, request_id=request_id)
    if name == "pause":
        return Pause(id=request_id)
    if name == "resume":
        return Resume(id=request_id)
    if name == "keywords":
        return SetKeywords(keywords=_keywords(data.get("keywords"), request_id),
                           id=request_id)
    if name == "translation":
        return SetTranslation(language=_language(data.get("language"), request_id),
                              id=request_id)
    raise ControlError(f"unknown command {name!r}; use one of {', '.join(COMMANDS)}",
                       code="unknown_command", command=name, request_id=request_id)


def _request_id(value: Any) -> str | None:
    """The optional `id`, echoed back: a string or a number, at most MAX_ID_CHARS."""
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value)
    return text[:MAX_ID_CHARS]


def _keywords(value: Any, request_id: str | None) -> tuple[str, ...]:
    def bad(why: str) -> ControlError:
        return ControlError(f'"keywords" {why}; send e.g. {{"command": "keywords", '
                            f'"keywords": ["lights on", "stop"]}}', code="invalid_argument",
                            command="keywords", request_id=request_id)

    if not isinstance(value, list):
        raise bad("must be a list of strings")
    if len(value) > MAX_KEYWORDS:
        raise bad(f"has {len(value)} entries; the limit is {MAX_KEYWORDS}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise bad("must contain only non-empty strings")
        if len(item) > MAX_KEYWORD_CHARS:
            raise bad(f"entry {item[:20]!r}... is longer than {MAX_KEYWORD_CHARS} characters")
        if item.strip() not in out:
            out.append(item.strip())
    return tuple(out)


def _language(value: Any, request_id: str | None) -> str | None:
    if value is None or value == "off":
        return None
    if not isinstance(value, str) or not _LANGUAGE.match(value):
        raise ControlError(f'"language" must be a language code such as "de" or "pt-BR", '
                           f'or null to stop; got {repr(value)[:MAX_NAME_CHARS]}',
                           code="invalid_argument",
                           command="translation", request_id=request_id)
    return value


def command_name(command: Command) -> str:
    if isinstance(command, Pause):
        return "pause"
    if isinstance(command, Resume):
        return "resume"
    if isinstance(command, SetKeywords):
        return "keywords"
    return "translation"


def apply(command: Command, target: Pausable) -> None:
    """Apply a parsed command; ControlError (code `unsupported`) if the task is not running,
    or the target's own ControlError, with the command's name and id filled in."""
    try:
        _apply(command, target)
    except ControlError as err:
        raise ControlError(str(err), code=err.code, command=command_name(command),
                           request_id=command.id) from err


def _apply(command: Command, target: Pausable) -> None:
    if isinstance(command, Pause):
        target.pause(by=REMOTE)
    elif isinstance(command, Resume):
        target.resume(by=REMOTE)
        if target.paused:
            raise ControlError("Harken was paused at the machine itself; a remote resume "
                               "lifts only a remote pause: resume it there",
                               code="paused_locally")
    elif isinstance(command, SetKeywords):
        if not isinstance(target, KeywordControl):
            raise ControlError(KEYWORDS_NOT_RUNNING, code="unsupported")
        target.set_keywords(command.keywords)
    else:
        if not isinstance(target, TranslationControl):
            raise ControlError(TRANSLATION_NOT_RUNNING, code="unsupported")
        target.set_translation(command.language)


def error_payload(error: ControlError, *, site: str, schema_version: int) -> dict[str, Any]:
    """What `<prefix>/<site>/error` carries for a rejected command."""
    return {"schema_version": schema_version, "site": site, "type": "control_error",
            "code": error.code, "command": error.command, "id": error.request_id,
            "message": str(error)}
