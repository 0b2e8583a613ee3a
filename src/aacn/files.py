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

__all__ = ["atomic_write", "write_json", "strict_json", "read_json", "loads_json", "check_output_dir",
           "check_output_file", "remove_stale_temporaries"]

MAX_JSON_BYTES = 64 * 2**20  # far above any record aacn writes (a record is kilobytes, metrics a line per epoch)
MAX_JSON_DEPTH = 32  # records nest a few levels deep
MAX_JSON_INT = 2**63  # parameter counts, bytes and seeds fit; a float conversion never overflows


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


def _where(field: list[str]) -> str:
    return ".".join(field) if field else "the top level"


def _check_tree(value: Any, where: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_JSON_DEPTH` or holding an integer of :data:`MAX_JSON_INT` or more."""
    stack: list[tuple[Any, list[str]]] = [(value, [])]
    while stack:
        node, field = stack.pop()
        if len(field) > MAX_JSON_DEPTH:
            raise UserError(f"{where}: field {_where(field[:3])}... is nested more than {MAX_JSON_DEPTH} levels deep, "
                            "which no aacn record is; restore or remove the record")
        if isinstance(node, dict):
            stack.extend((v, [*field, str(k)]) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, [*field, f"[{i}]"]) for i, v in enumerate(node))
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= MAX_JSON_INT:
            raise UserError(f"{where}: field {_where(field)} is an integer of {len(str(abs(node)))} digits, larger "
                            "than any value aacn records; restore or remove the record")


def loads_json(text: str, where: str) -> Any:
    """Parse the JSON ``text`` of a record read from ``where`` (a file name), never running away on hostile input.

    Raises :class:`UserError` naming ``where`` (and the field) for text that is not JSON, nests deeper than
    :data:`MAX_JSON_DEPTH` or holds an integer of :data:`MAX_JSON_INT` or more. ``NaN`` (older records) is read.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}); restore or remove the record"
                        ) from None
    except RecursionError:
        raise UserError(f"{where} is nested too deeply to be an aacn record; restore or remove the record") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise UserError(f"{where} is not a usable record ({exc}); restore or remove the record") from None
    _check_tree(value, where)
    return value


def read_text_bounded(path: str | os.PathLike, max_bytes: int | None = None) -> str:
    """The UTF-8 text of ``path``, refused (:class:`UserError` naming it) beyond ``max_bytes`` (default
    :data:`MAX_JSON_BYTES`) or when it cannot be read. ``FileNotFoundError`` is left to the caller."""
    path = Path(path)
    limit = MAX_JSON_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
        if len(raw) > limit:
            raise UserError(f"{path} is larger than {limit:,} bytes, which no aacn record is; restore or remove the "
                            "record")
        return raw.decode("utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"{path} cannot be read ({reason}); fix its permissions or restore the record") from None


def read_json(path: str | os.PathLike, *, max_bytes: int | None = None) -> Any:
    """The JSON record in ``path``, read as :func:`loads_json` reads it; at most ``max_bytes`` are read
    (default :data:`MAX_JSON_BYTES`).

    Raises :class:`UserError` naming the file when it cannot be read, is larger, or is not a usable record.
    ``FileNotFoundError`` is left to the caller, who knows what a missing file means.
    """
    text = read_text_bounded(path, max_bytes)
    return loads_json(text, str(path))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what interrupted :func:`atomic_write` calls left in ``folder`` (``.NAME.*.tmp``); return them.

    Call it only while no other process writes in ``folder`` (e.g. holding its run lock).
    """
    removed = []
    try:
        candidates = list(Path(folder).glob(".*.tmp"))
    except OSError:
        return removed
    for path in candidates:
        if path.is_file() and not path.is_symlink():
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    return removed


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
