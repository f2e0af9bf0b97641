"""Output text files whose failures name the file and the fix (for every file sink)."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterable, Iterator
from pathlib import Path

from harken.models.errors import SinkError


class TextFile:
    """A text file whose failing writes (disk full, a lost mount) name the file and the fix."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._errors("cannot create"):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8", newline="\n")

    @contextlib.contextmanager
    def _errors(self, what: str = "cannot write") -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise SinkError(f"{what} {self.path}: {exc.strerror or exc}. {_fix(exc)}; what "
                            "was written before is kept") from exc

    def write(self, text: str) -> None:
        with self._errors():
            self._file.write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        with self._errors():
            self._file.writelines(lines)

    def flush(self) -> None:
        with self._errors():
            self._file.flush()

    def close(self) -> None:
        with self._errors():
            self._file.close()


def _fix(exc: OSError) -> str:
    """What to do about a file error, by its cause."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free some space, or choose another folder with --out"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return "Too many files are open: raise the limit (ulimit -n, LimitNOFILE=)"
    return "Choose another folder with --out"
