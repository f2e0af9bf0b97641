"""Writing tuned thresholds into the user's TOML config, under each model's id.

```toml
[speakers.calibration."microsoft/unispeech-sat-base-plus-sd"]
tau_active = 0.52
```

tomlkit edits the file in place, so the user's comments, order and other settings stay as
they were. A file that does not parse is never rewritten (the user fixes it first); the new
text is written to a temporary file beside it and moved over it, so an interrupted write
never leaves half a config.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from harken.models.errors import ConfigWriteError

DECIMALS = 4  # tuned values are written rounded: more digits would be noise


def _table(parent: Any, key: str, *, where: str, path: Path) -> Any:
    if key not in parent:
        parent[key] = tomlkit.table()
    found = parent[key]
    if not isinstance(found, dict):
        raise ConfigWriteError(f"{path}: {where} is not a table; fix the file so that "
                               f"harken tune can add its values there")
    return found


def write_calibration(path: Path, values: Mapping[str, Mapping[str, float]]) -> None:
    """Sets `[speakers.calibration."MODEL"] key = value` for each model and key."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigWriteError(f"cannot read {path} ({exc}); fix it or pass --config "
                               "with a file harken tune may update") from exc
    try:
        tomllib.loads(text)
        doc = tomlkit.parse(text)
    except (tomllib.TOMLDecodeError, TOMLKitError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigWriteError(f"{path} is not valid TOML ({reason}); harken tune leaves it "
                               "untouched: fix the file, then tune again") from exc
    speakers = _table(doc, "speakers", where="[speakers]", path=path)
    calibration = _table(speakers, "calibration", where="speakers.calibration", path=path)
    for model, pairs in values.items():
        table = _table(calibration, model, where=f'speakers.calibration."{model}"', path=path)
        for key, value in pairs.items():
            table[key] = round(float(value), DECIMALS)
    new_text = tomlkit.dumps(doc)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(new_text)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigWriteError(f"cannot write {path} ({exc.strerror or exc}); pass --config "
                               "with a writable file") from exc
