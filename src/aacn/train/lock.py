"""One writer per run directory: an exclusive lock that the operating system releases when its holder dies.

:func:`run_lock` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``FOLDER/.aacn-lock`` and writes the holder's PID
into it. A second process that asks for the same folder gets, at once, one :class:`~aacn.errors.UserError` naming
that PID. The lock belongs to the open file, so a process that is killed (SIGKILL included) releases it with its
file descriptors; a clean release also removes the file. After taking the lock the holder checks that the path
still names the file it locked (a releasing holder may have just removed it), so two processes never both hold
the lock of one folder. Within one process the lock is re-entrant: a command that holds a folder may call code
that takes the same folder's lock again.

Where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from aacn.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "run_lock", "lock_holder"]

LOCK_NAME = ".aacn-lock"
_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth


def lock_holder(folder: str | os.PathLike) -> str:
    """The PID written in ``folder``'s lock file (``"unknown"`` if it cannot be read)."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _acquire(path: Path) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock, or None if another process holds it."""
    for _ in range(100):  # retried only while a holder removes the file under us
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file that was removed meanwhile: try the new one
    raise UserError(f"could not lock {path}: it keeps being replaced; is another program deleting it?")


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "--out") -> Iterator[None]:
    """Hold ``folder``'s exclusive lock for the ``with`` block; ``folder`` must exist.

    Raises :class:`UserError` naming the holder's PID (and ``what``, the option that named the folder) when
    another process holds it.
    """
    if fcntl is None:
        yield
        return
    path = (Path(folder).resolve() / LOCK_NAME)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        fd = _acquire(path)
    except OSError as exc:
        raise UserError(f"cannot lock {folder} ({exc.strerror or exc}); choose a writable {what}") from None
    if fd is None:
        raise UserError(f"{folder} is in use by another aacn process (PID {lock_holder(folder)}), which writes "
                        f"its records; wait for it to finish, stop it, or choose another {what}")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[path] = 1
        yield
    finally:
        _held.pop(path, None)
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiter that opened it sees it gone and retries
        os.close(fd)
