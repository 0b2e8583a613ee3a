"""Read a CIFAR pickle without letting it run code.

A pickle can name any importable callable and call it while loading, so a crafted ``batches.meta`` loaded with
plain ``pickle.load`` runs whatever it names. :func:`load_pickle` resolves only the globals the CIFAR batch files
need (numpy array, scalar and dtype reconstruction, and a few builtin containers) from a fixed table; a file
that names anything else is refused before that callable is ever looked up, with a :class:`~aacn.errors.UserError`
naming the file.

Allowed, by the name a pickle uses (both numpy 1.x ``numpy.core`` and numpy 2.x ``numpy._core`` spellings):

* ``numpy.core.multiarray._reconstruct`` / ``scalar``, ``numpy.ndarray``, ``numpy.dtype`` and
  ``numpy.core.numeric._frombuffer`` (protocol 5): the official files hold their images as a numpy array;
* ``_codecs.encode`` with the ``latin1`` codec only: how Python 3 writes ``bytes`` at pickle protocol < 3;
* ``builtins`` (``__builtin__`` in Python 2 pickles) ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``,
  ``str``, ``bytes``, ``bytearray``, ``int``, ``float``, ``complex`` and ``bool``.
"""

from __future__ import annotations

import builtins
import io
import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np

from aacn.data.integrity import read_error
from aacn.errors import UserError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _encode_latin1(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 codec (no codec lookup by a name the file chooses)."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} (only latin1 is allowed)")
    return text.encode("latin1", errors)


_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex",
             "bool")
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    **{(mod, name): getattr(_multiarray, name)
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
    **{(mod, "_frombuffer"): _numeric._frombuffer
       for mod in ("numpy.core.numeric", "numpy._core.numeric") if hasattr(_numeric, "_frombuffer")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode_latin1,
    **{(mod, name): getattr(builtins, name) for mod in ("builtins", "__builtin__") for name in _BUILTINS},
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ALLOWED_GLOBALS`."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load_restricted(file: BinaryIO) -> object:
    """Unpickle from ``file`` (Python 2 ``str`` decoded as latin-1), resolving only :data:`ALLOWED_GLOBALS`.

    Raises :class:`ForbiddenGlobal` for any other global, and what ``pickle`` raises for a damaged stream.
    """
    return _RestrictedUnpickler(file, encoding="latin1").load()


def loads_restricted(data: bytes) -> object:
    """:func:`load_restricted` from bytes."""
    return load_restricted(io.BytesIO(data))


def load_pickle(path: Path) -> object:
    """The object pickled in ``path``, loaded with :func:`loads_restricted`.

    Every failure is a :class:`UserError` that names ``path`` and says what is wrong: the file cannot be read
    (e.g. no read permission), it names a callable a CIFAR file never holds (nothing of it runs), or it is not a
    complete pickle.
    """
    try:
        with open(path, "rb") as f:
            return load_restricted(f)
    except OSError as e:
        raise read_error(path, e) from None
    except ForbiddenGlobal as e:
        raise UserError(f"refusing to load {path}: it asks to call {e.qualname}, which no CIFAR data file "
                        f"holds (a crafted file could run code this way); replace it with the official "
                        f"file") from None
    except Exception as e:  # a truncated or garbled pickle can raise almost any exception type
        raise UserError(f"cannot read {path}: it is not a complete CIFAR pickle ({type(e).__name__}: {e}); "
                        f"replace it with the official file") from None
