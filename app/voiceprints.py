"""The voiceprint store: enrolled speakers' embeddings in a private SQLite file.

Voiceprints are biometric data. The file is created with permissions 0600 (its folder 0700)
and tightened to 0600 if found looser; SQLite gives its journal the same permissions. Each
row keeps the model id its embedding came from: embeddings of different models live in
different spaces and are never compared (`ModelMismatchError` says to re-enroll). Every
operation is one short transaction (writes take the lock up front with BEGIN IMMEDIATE), so
two processes enrolling or removing at once serialise instead of losing an update.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import platformdirs

from harken.models.clustering import FloatArray, Voiceprint, l2_normalize
from harken.models.errors import (
    ModelMismatchError,
    UnknownSpeakerError,
    VoiceprintError,
)

STORE_NAME = "voiceprints.sqlite"
FILE_MODE = 0o600  # owner read/write only
DIR_MODE = 0o700
LOCK_TIMEOUT_S = 30.0  # how long a write waits for another process's transaction
MAX_NAME_CHARS = 64
_ANONYMOUS = re.compile(r"^S\d+$")  # the labels of unknown voices
_SCHEMA = """
CREATE TABLE IF NOT EXISTS voiceprints (
    name TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    embedding BLOB NOT NULL,   -- float32: mean of the clips' L2-normalised embeddings
    clips INTEGER NOT NULL,
    speech_s REAL NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
)
"""


def default_store_path() -> Path:
    return Path(platformdirs.user_data_dir("harken")) / STORE_NAME


def check_name(name: str) -> str:
    """A speaker name as stored: trimmed, printable, not an anonymous label like S2."""
    clean = name.strip()
    if not clean or len(clean) > MAX_NAME_CHARS or not clean.isprintable():
        raise VoiceprintError(f"speaker name {name!r} must be 1 to {MAX_NAME_CHARS} printable "
                              "characters; choose another name")
    if _ANONYMOUS.match(clean):
        raise VoiceprintError(f"{clean!r} looks like the label of an unknown voice (S1, S2, "
                              "...); enroll the person under their name")
    return clean


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredVoiceprint:
    name: str
    model_id: str
    embedding: FloatArray
    clips: int
    speech_s: float
    created: str
    updated: str

    def voiceprint(self) -> Voiceprint:
        return Voiceprint(name=self.name, embedding=self.embedding)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _tighten(folder: Path) -> None:
    """Our own store folder is 0700 at every open, not only when it was made: one found
    wider (restored from a backup, changed by hand) is tightened. A shared folder (not
    ours, or sticky like /tmp) is left alone: the store file itself is 0600 there."""
    info = folder.stat()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid == os.geteuid() and not mode & stat.S_ISVTX and mode & ~DIR_MODE:
        os.chmod(folder, DIR_MODE)


class VoiceprintStore:
    """`VoiceprintStore(path=...)`: opens (and creates, privately) the SQLite file per call."""

    def __init__(self, *, path: Path | None = None) -> None:
        self.path = path if path is not None else default_store_path()

    def _prepare(self) -> None:
        folder = self.path.parent
        try:
            if not folder.exists():
                folder.mkdir(parents=True, mode=DIR_MODE)
            _tighten(folder)
            # Create the file ourselves so it is never visible with wider permissions.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & ~FILE_MODE:
                    os.fchmod(fd, FILE_MODE)
            finally:
                os.close(fd)
        except OSError as exc:
            raise VoiceprintError(
                f"cannot open the voiceprint store {self.path}: {exc.strerror or exc}; set "
                "speakers.store (HARKEN_SPEAKERS__STORE) to a writable file"
            ) from exc

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        self._prepare()
        try:
            conn = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise VoiceprintError(f"cannot open the voiceprint store {self.path}: {exc}") from exc
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            conn.execute(_SCHEMA)
            yield conn
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise VoiceprintError(
                f"the voiceprint store {self.path} is unusable ({exc}); if it is damaged, "
                "remove the file and enroll again"
            ) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    @staticmethod
    def _row(row: tuple[object, ...]) -> StoredVoiceprint:
        name, model_id, dim, blob, clips, speech_s, created, updated = row
        if not isinstance(blob, bytes):
            raise VoiceprintError(f"voiceprint {name!r} has no embedding; remove and re-enroll")
        embedding = np.frombuffer(blob, dtype=np.float32).copy()
        if embedding.shape[0] != dim:
            raise VoiceprintError(f"voiceprint {name!r} is damaged; remove and re-enroll it")
        return StoredVoiceprint(name=str(name), model_id=str(model_id), embedding=embedding,
                                clips=int(str(clips)), speech_s=float(str(speech_s)),
                                created=str(created), updated=str(updated))

    _COLUMNS = "name, model_id, dim, embedding, clips, speech_s, created, updated"

    def enroll(self, name: str, *, model_id: str, embeddings: FloatArray,
               speech_s: float, replace: bool = False) -> tuple[StoredVoiceprint, str]:
        """Adds clips' embeddings [clips, dim] to NAME's voiceprint (or starts it).

        The voiceprint is the mean of all its clips' unit embeddings (kept unnormalised, so
        later clips weigh the same as earlier ones; cosine similarity uses its direction). A
        voiceprint of another model (or `replace`) is started afresh. Returns it and what happened:
        "created", "updated" or "replaced".
        """
        name = check_name(name)
        units = l2_normalize(np.atleast_2d(embeddings))
        if units.shape[0] == 0 or not np.isfinite(units).all():
            raise VoiceprintError(f"no usable embedding to enroll {name!r}")
        with self._connect(write=True) as conn:
            found = conn.execute(f"SELECT {self._COLUMNS} FROM voiceprints WHERE name = ?",
                                 (name,)).fetchone()
            old = self._row(found) if found is not None else None
            now = _now()
            clips, total = units.shape[0], units.sum(axis=0, dtype=np.float64)
            action = "created" if old is None else "replaced"
            if old is not None and not replace and old.model_id == model_id \
                    and old.embedding.shape == units.shape[1:]:
                total = total + old.embedding.astype(np.float64) * old.clips
                clips += old.clips
                speech_s += old.speech_s
                action = "updated"
            vector = (total / clips).astype(np.float32)
            created = old.created if old is not None and action == "updated" else now
            conn.execute(
                "INSERT OR REPLACE INTO voiceprints (name, model_id, dim, embedding, clips, "
                "speech_s, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, model_id, int(vector.shape[0]), vector.astype(np.float32).tobytes(),
                 clips, float(speech_s), created, now))
        return StoredVoiceprint(name=name, model_id=model_id, embedding=vector, clips=clips,
                                speech_s=float(speech_s), created=created, updated=now), action

    def get(self, name: str, *, model_id: str | None = None) -> StoredVoiceprint:
        """NAME's voiceprint; with `model_id`, refuses one enrolled with another model."""
        with self._connect(write=False) as conn:
            found = conn.execute(f"SELECT {self._COLUMNS} FROM voiceprints WHERE name = ?",
                                 (name.strip(),)).fetchone()
        if found is None:
            raise UnknownSpeakerError(f"nobody named {name!r} is enrolled; see `harken speakers "
                                      "list`, or enroll them with `harken speakers enroll`")
        vp = self._row(found)
        if model_id is not None and vp.model_id != model_id:
            raise ModelMismatchError(
                f"{vp.name!r} was enrolled with the speaker model {vp.model_id!r}, not "
                f"{model_id!r}; embeddings of different models cannot be compared. Re-enroll "
                f"them (`harken speakers enroll {vp.name!r} FILE... --replace`) or pass "
                f"--speaker-model {vp.model_id}"
            )
        return vp

    def entries(self) -> list[StoredVoiceprint]:
        with self._connect(write=False) as conn:
            rows = conn.execute(f"SELECT {self._COLUMNS} FROM voiceprints ORDER BY name")
            return [self._row(r) for r in rows.fetchall()]

    def for_model(self, model_id: str) -> tuple[list[StoredVoiceprint], list[StoredVoiceprint]]:
        """(voiceprints of `model_id`, voiceprints of other models, which must not be used)."""
        usable: list[StoredVoiceprint] = []
        other: list[StoredVoiceprint] = []
        for vp in self.entries():
            (usable if vp.model_id == model_id else other).append(vp)
        return usable, other

    def remove(self, name: str) -> None:
        with self._connect(write=True) as conn:
            cursor = conn.execute("DELETE FROM voiceprints WHERE name = ?", (name.strip(),))
            if cursor.rowcount == 0:
                raise UnknownSpeakerError(f"nobody named {name!r} is enrolled; see "
                                          "`harken speakers list`")
