"""`--mqtt embedded`: a mosquitto broker started for this run, for a one-machine setup.

    async with EmbeddedBroker(port=1883) as broker:
        settings = broker.settings          # what the sink / source connect to

The broker is a mosquitto child process with a config generated into a private temporary
folder (its listener, anonymous access, a packet size limit), started when the run starts
and stopped (SIGTERM, then SIGKILL) when it ends. Port 0 picks a free port. A port already
in use, or no mosquitto binary, raises BrokerError: one line that says what to do.

Why not an in-process Python broker: amqtt lost QoS 0 control commands from short-lived
clients and stopped delivering to a subscriber after other clients came and went (issue
10), and a control path that works only sometimes is worse than a clear "install
mosquitto" (it is a set-up dependency: scripts/system-deps.sh).

It listens on 127.0.0.1 by default; host="0.0.0.0" lets Home Assistant or satellites on
other machines connect (there is no authentication: trusted networks only).
`persistence_dir` keeps QoS 1 sessions across `restart()` (the soak benchmark uses it).

The private folder's name records its owner (`harken-mosquitto-<pid>-<start>-...`: the pid
and the process's start time, so a reused pid is not mistaken for it). A Harken that was
killed (SIGKILL) cannot remove its folder; the next embedded broker to start removes every
such folder whose owner is gone (`remove_stale_folders`), and never one of a live process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from harken.engine.mqtt.client import MqttSettings
from harken.models.errors import BrokerError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
MOSQUITTO_START_TIMEOUT_S = 10.0
MOSQUITTO_STOP_TIMEOUT_S = 5.0
MAX_PACKET_BYTES = 1024 * 1024  # larger MQTT packets are refused by the broker itself
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _pdeathsig() -> Callable[[], None] | None:
    """Linux: a preexec function that asks the kernel to send the child SIGTERM when the
    thread that started it ends. The broker runs in a process group of its own (a
    terminal's Ctrl-C must not stop it under the session), so this is what ends it when
    Harken ends without a clean stop: a closed terminal in the terminal app, SIGKILL."""
    try:
        prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no such call
        return None

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return die_with_parent


_DIE_WITH_PARENT = _pdeathsig()
SBIN_PATH = "/usr/sbin:/usr/local/sbin"
_LOG_TAIL_LINES = 3  # broker log lines quoted when it fails to start
FOLDER_PREFIX = "harken-mosquitto-"
#: the private folder: owner pid, owner start time (clock ticks since boot; 0 where unknown),
#: then tempfile's random part (letters, digits, "_"; never "-")
_OWNED_FOLDER = re.compile(rf"{FOLDER_PREFIX}(\d+)-(\d+)-[a-z0-9_]+")
_PROC_STAT = Path("/proc/self/stat").exists()  # Linux: start times tell a reused pid apart


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, from Linux's /proc), 0 where this
    system does not say, None when there is no such process."""
    if _PROC_STAT:
        try:
            line = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return None
        except OSError:  # unreadable (e.g. hidepid): ask the kernel whether it lives
            pass
        else:
            # Field 22; the command name (field 2, in parentheses) may hold spaces and ")".
            return int(line.rpartition(")")[2].split()[19])
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return None
    except PermissionError:  # someone else's process: alive
        return 0
    return 0


def _owner_gone(pid: int, start: int) -> bool:
    now = process_start(pid)
    return now is None or (start != 0 and now != 0 and now != start)


def remove_stale_folders(tmp_dir: Path | None = None) -> list[Path]:
    """Removes the private folders of embedded brokers whose Harken is gone (killed before it
    could clean up); returns them. Only this user's folders that name their owner are
    candidates: a folder of a live process, of another user, or of an older Harken (no owner
    in its name) is left alone."""
    folder = Path(tmp_dir if tmp_dir is not None else tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:  # an unreadable temp folder: nothing to tidy, the start goes on
        return removed
    uid = os.geteuid()
    for entry in entries:
        match = _OWNED_FOLDER.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.lstat()
        except FileNotFoundError:  # another Harken tidied it just now
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
            continue
        if _owner_gone(int(match[1]), int(match[2])):
            # A failure (another Harken removing it at the same time) leaves it for later.
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


def _folder_prefix() -> str:
    pid = os.getpid()
    return f"{FOLDER_PREFIX}{pid}-{process_start(pid) or 0}-"


def mosquitto_binary() -> str | None:
    """mosquitto on PATH, or in the sbin folders Debian installs it to."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=SBIN_PATH)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("", "0.0.0.0") else "", 0))
        return int(s.getsockname()[1])


NOT_INSTALLED = ("--mqtt embedded needs mosquitto (e.g. apt install mosquitto, or "
                 "scripts/system-deps.sh); or point --mqtt at a running broker: "
                 "mqtt://host:1883")


def _in_use(host: str, port: int, detail: str) -> BrokerError:
    return BrokerError(f"cannot start the embedded MQTT broker on {host}:{port} ({detail}): "
                       f"is another broker running there? Use it with --mqtt "
                       f"mqtt://{host}:{port}, or set mqtt.embedded_port to another port "
                       "(0 picks a free one)")


class EmbeddedBroker:
    def __init__(self, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 persistence_dir: Path | None = None) -> None:
        if not 0 <= port < 65536:
            raise ValueError(f"port must be 0-65535 (0: a free one), got {port}")
        self.host = host
        self.port = port if port else free_port(host)
        self.persistence_dir = persistence_dir
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> MqttSettings:
        """How a client on this machine connects."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return MqttSettings(host=host, port=self.port)

    @property
    def description(self) -> str:
        return f"embedded MQTT broker (mosquitto) on {self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stop()  # no stray process or folder is left behind
            self._cleanup()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stop()
        self._cleanup()

    async def restart(self) -> None:
        """Stop and start again on the same port (with persistence_dir, sessions and
        queued QoS 1 messages survive)."""
        await self._stop()
        await self._start()
        self.restarts += 1

    def _config(self) -> Path:
        if self._tmp is None:
            remove_stale_folders()
            self._tmp = tempfile.TemporaryDirectory(prefix=_folder_prefix())
        lines = [f"listener {self.port} {self.host}", "allow_anonymous true",
                 f"max_packet_size {MAX_PACKET_BYTES}",
                 "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
                 "log_type information"]
        if self.persistence_dir is not None:
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # As root mosquitto switches to the `mosquitto` user, which may not be able to
            # read our private folder or the persistence folder: stay who we are.
            lines.append("user root")
        conf = Path(self._tmp.name) / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    async def _start(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError(NOT_INSTALLED)
        # A process group of its own: the terminal's Ctrl-C (sent to the whole foreground
        # group) must not stop the broker under the session, whose first Ctrl-C still
        # publishes the last finals; the session stops it once they are out. It starts in
        # the broker's own thread, which lives as long as the broker: when that thread or
        # the whole process ends, the kernel stops mosquitto (_DIE_WITH_PARENT).
        process = await asyncio.create_subprocess_exec(
            binary, "-c", str(self._config()), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, process_group=0, preexec_fn=_DIE_WITH_PARENT)
        self._process = process
        try:
            await asyncio.wait_for(_wait_running(process), MOSQUITTO_START_TIMEOUT_S)
        except TimeoutError as exc:
            raise BrokerError(f"mosquitto did not start within {MOSQUITTO_START_TIMEOUT_S:.0f}"
                              " s; run it by hand (mosquitto -v) to see why") from exc
        except _Exited as exc:
            # Let it finish exiting first: terminating a process that is already gone races
            # asyncio's child watcher for its exit status (a stray "Unknown child process").
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), MOSQUITTO_STOP_TIMEOUT_S)
            if "in use" in str(exc).lower():
                raise _in_use(self.host, self.port, "address already in use") from exc
            raise BrokerError(f"mosquitto could not start: {exc}") from exc
        if process.stdout is not None:
            # Keep reading its log so a full pipe never blocks the broker; ends at its exit.
            self._log_task = asyncio.create_task(_drain(process.stdout), name="mosquitto-log")

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), MOSQUITTO_STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
        task, self._log_task = self._log_task, None
        if task is not None:
            await task  # the pipe ended with the process

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _Exited(Exception):
    """mosquitto exited before saying it runs; the message is its last log lines."""


async def _wait_running(process: asyncio.subprocess.Process) -> None:
    lines: list[str] = []
    while process.stdout is not None:
        raw = await process.stdout.readline()
        if not raw:
            raise _Exited("; ".join(lines[-_LOG_TAIL_LINES:]) or "mosquitto exited")
        line = raw.decode(errors="replace").strip()
        lines.append(line)
        if " running" in line:
            return


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await stream.readline():
            pass
