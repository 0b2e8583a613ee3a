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

Memory is bounded too: the callables that allocate by a size the file names (``bytearray(n)``, ``bytes(n)``,
``numpy.ndarray(shape, dtype)``, ``_reconstruct``, ``scalar``) are refused when they ask for more bytes than the
file holds (at least 1 MiB is allowed), before anything is allocated.
"""

from __future__ import annotations

import builtins
import io
import os
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


class TooLarge(pickle.UnpicklingError):
    """The pickle asks for an object larger than its file could legitimately hold."""


MIN_LIMIT = 2**20  # what any pickle may allocate, whatever its size (small containers, headers)


def _nbytes(shape: object, dtype: object) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (arguments as a pickle gives them), without allocating it."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)  # type: ignore[arg-type]
    total = np.dtype(dtype).itemsize  # type: ignore[arg-type]
    for d in dims:
        if not isinstance(d, int) or d < 0:
            raise pickle.UnpicklingError(f"array dimension {d!r} is not a size")
        total *= d
    return total


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; the callables that allocate by a size the file names (``bytes(n)``,
    ``bytearray(n)``, ``numpy.ndarray(shape, dtype)``, ``_reconstruct``, ``scalar``) are checked against ``limit``
    bytes first, so a 60-byte file cannot ask for gigabytes."""

    def __init__(self, file: BinaryIO, limit: int) -> None:
        super().__init__(file, encoding="latin1")
        self.limit = max(limit, MIN_LIMIT)

    def _check(self, nbytes: int, what: str) -> None:
        if nbytes > self.limit:
            raise TooLarge(f"{what} of {nbytes:,} bytes, more than the file could hold ({self.limit:,} bytes)")

    def find_class(self, module: str, name: str) -> object:
        try:
            found = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None
        if found in (bytes, bytearray):
            def sized(*args, _cls=found):
                if args and isinstance(args[0], int):
                    self._check(args[0], f"{_cls.__name__}({args[0]})")
                return _cls(*args)
            return sized
        if found is np.ndarray:
            return _NdarrayType(self)
        if found is _multiarray._reconstruct:
            def reconstruct(subtype, shape, dtype):
                if isinstance(subtype, _NdarrayType):
                    subtype = np.ndarray
                if subtype is not np.ndarray:
                    raise pickle.UnpicklingError(f"_reconstruct of {subtype!r} (only numpy.ndarray is allowed)")
                self._check(_nbytes(shape, dtype), "an array")
                return _multiarray._reconstruct(subtype, shape, dtype)
            return reconstruct
        if found is _multiarray.scalar:
            def scalar(dtype, *args):
                self._check(np.dtype(dtype).itemsize, "a scalar")
                return _multiarray.scalar(dtype, *args)
            return scalar
        return found

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed")


class _NdarrayType:
    """``numpy.ndarray`` as a pickle names it: the argument of ``_reconstruct``, or called with a checked size."""

    def __init__(self, unpickler: _RestrictedUnpickler) -> None:
        self._unpickler = unpickler

    def __call__(self, shape, dtype=float, *args, **kwargs):
        self._unpickler._check(_nbytes(shape, dtype), "an array")
        return np.ndarray(shape, dtype, *args, **kwargs)


def load_restricted(file: BinaryIO, limit: int | None = None) -> object:
    """Unpickle from ``file`` (Python 2 ``str`` decoded as latin-1), resolving only :data:`ALLOWED_GLOBALS`.

    ``limit``: the most bytes one object may ask for (default: the file's size; at least :data:`MIN_LIMIT`): an
    array or buffer's data must be in the file, so a larger request is a crafted file, refused before any
    memory is allocated. Raises :class:`ForbiddenGlobal` for any other global, :class:`TooLarge` for a larger
    request, and what ``pickle`` raises for a damaged stream.
    """
    if limit is None:
        try:
            limit = os.fstat(file.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            limit = len(file.getbuffer()) if isinstance(file, io.BytesIO) else MIN_LIMIT
    return _RestrictedUnpickler(file, limit).load()


def loads_restricted(data: bytes) -> object:
    """:func:`load_restricted` from bytes (limited by their length)."""
    return load_restricted(io.BytesIO(data), len(data))


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
    except TooLarge as e:
        raise UserError(f"refusing to load {path}: it asks for {e}, which no CIFAR data file does (a crafted file "
                        f"could exhaust memory this way); replace it with the official file") from None
    except ForbiddenGlobal as e:
        raise UserError(f"refusing to load {path}: it asks to call {e.qualname}, which no CIFAR data file "
                        f"holds (a crafted file could run code this way); replace it with the official "
                        f"file") from None
    except Exception as e:  # a truncated or garbled pickle can raise almost any exception type
        raise UserError(f"cannot read {path}: it is not a complete CIFAR pickle ({type(e).__name__}: {e}); "
                        f"replace it with the official file") from None
