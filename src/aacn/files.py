"""Files that aacn writes: atomic writes, strict JSON, and output paths checked before any work.

Every record, checkpoint, report and cache aacn writes goes through :func:`atomic_write`: the content lands in
a temporary sibling, is flushed to disk, gets the permissions a plain ``open()`` would give it under the
current umask, and is renamed over the target. A crash, a full disk or SIGKILL therefore leaves either the old
file or the new one, never a half-written file that looks valid, and colleagues on a shared filesystem can
read what the user's umask lets them read.

JSON is written strictly: ``NaN`` and infinities are not JSON, so :func:`write_json` stores them as ``null``
("nothing was measured") and strict readers accept every record.

:func:`check_output_dir` and :func:`check_output_file` turn an unusable output path (an existing file where a
folder is wanted, a read-only folder, a path below a file) into one :class:`UserError` that names the option,
so commands can check their outputs before they load data or build a model.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aacn.errors import UserError

__all__ = ["atomic_write", "write_json", "strict_json", "check_output_dir", "check_output_file"]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = False) -> None:
    """Write ``path`` through ``write(fileobj)`` into a temporary sibling, fsync it, then rename over ``path``.

    The file gets mode ``0o666 & ~umask``, as ``open(path, "w")`` would create it. On any error (a full disk
    included) the temporary file is removed, the previous ``path`` is untouched, and an ``OSError`` becomes a
    :class:`UserError` that says so.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"could not write {path} ({exc.strerror or exc}); choose a writable location") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 whatever the umask
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(
            f"could not write {path} ({exc.strerror or exc}); the previous version is intact. "
            "Free disk space (or fix permissions) and run the same command again"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, so that ``json.dumps(allow_nan=False)`` holds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented, strict JSON (non-finite numbers become ``null``)."""
    text = json.dumps(strict_json(data), indent=2, allow_nan=False, default=str) + "\n"
    atomic_write(path, lambda fh: fh.write(text))


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Make sure ``path`` is (or can become) a writable folder; create it. Raise one-line :class:`UserError`.

    ``option`` names what the user set (e.g. ``"--out"``) so the message says what to change.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is an existing file, not a folder; choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{option} {path} cannot be written ({exc.strerror or exc}); choose another {option}"
                        ) from None
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Make sure a file can be written at ``path`` (its folder is created); raise one-line :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name, e.g. {path / 'out.png'}")
    check_output_dir(path.parent if str(path.parent) else Path("."), option)
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path} exists and is not writable; choose another {option}")
    return path
