"""How a configuration option is declared and checked: :func:`option` field metadata, and :func:`validate`.

An option is a dataclass field made with :func:`option`: its default, help text, CLI flag, allowed values, check
and whether it can change a result sit in one place. :func:`validate` (called from a config's
``__post_init__``) checks every option field by its type annotation and metadata, normalises it (ints to floats
for float options, lists or comma-separated strings to tuples of names) and raises
:class:`aacn.errors.OptionError` naming the option. :mod:`aacn.config` declares the options of a run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any

from aacn.errors import OptionError

__all__ = ["at_most", "option", "validate", "problem", "kind_of", "type_hints", "names_value", "is_int", "is_real",
           "positive_int", "non_negative_int", "positive_number", "non_negative_number", "probability"]


# ------------------------------------------------------------------------------------------------ checks
# A check returns what is wrong with a value ("must be ...") or None; the caller names the option.
def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(value: Any) -> str | None:
    return None if is_int(value) and value > 0 else "must be a positive integer"


def non_negative_int(value: Any) -> str | None:
    return None if is_int(value) and value >= 0 else "must be an integer >= 0"


def positive_number(value: Any) -> str | None:
    return None if is_real(value) and math.isfinite(value) and value > 0 else "must be a positive number"


def non_negative_number(value: Any) -> str | None:
    return None if is_real(value) and math.isfinite(value) and value >= 0 else "must be a number >= 0"


def probability(value: Any) -> str | None:
    return None if is_real(value) and 0 <= value < 1 else "must be a probability in [0, 1)"


# ------------------------------------------------------------------------------------------ declarations
def at_most(check: Callable[[Any], str | None], limit: float) -> Callable[[Any], str | None]:
    """``check``, and no more than ``limit``: beyond any sane run, such values only exhaust memory or overflow."""
    def bounded(value: Any) -> str | None:
        wrong = check(value)
        if wrong:
            return wrong
        return None if value <= limit else f"must be at most {limit:,} (a sane limit)"

    bounded.__name__ = f"{getattr(check, '__name__', 'check')}_at_most"
    return bounded


def option(default: Any = None, help: str | Callable[[], str] = "", *, flat: str | None = None, flag: str | None = None,
           choices: Iterable[str] | None = None, check: Callable[[Any], str | None] | None = None,
           neutral: bool = False, sweep: bool = True, cli: bool = True, run: bool = True,
           default_text: str | None = None, metavar: str | None = None) -> Any:
    """A config field with everything about the option in one place.

    Args:
        default: the value when the option is not given.
        help: what the option does (the CLI help; the default is appended to it), or a function that returns
            it when it is shown (for help that names values a lower layer cannot import when it is loaded).
        flat: the option's run-wide name when it differs from the field's (``impl`` -> ``attention_impl``).
        flag: the CLI flag when it is not ``--<flat-name-with-dashes>`` (``--no-augment`` for a true default).
        choices: the allowed values; a mapping (a registry such as ``aacn.data.DATASETS``) is kept as it is, so
            its keys are the values allowed when a value is checked, entries registered later included.
        check: returns what is wrong with a value, or None.
        neutral: the option cannot change a result (where files go, how fast it runs, what else is measured).
        sweep: ``aacn sweep --grid`` may vary it.
        cli: it has a flag of its own.
        run: it is an option of a :class:`RunConfig` (False: set by code, e.g. ``num_classes`` by the dataset).
        default_text: how help names a ``None`` default ("the recipe's").
    """
    metadata = {"help": help, "flat": flat, "flag": flag, "choices": _choices(choices),
                "check": check, "neutral": neutral, "sweep": sweep and run, "cli": cli and run, "run": run,
                "default_text": default_text, "metavar": metavar}
    return field(default=default, metadata=metadata)


def _choices(choices: Iterable[str] | None) -> Iterable[str] | None:
    if not choices:
        return None
    return choices if isinstance(choices, Mapping) else tuple(choices)


def validate(obj: Any) -> None:
    """Check and normalise every option field of a config dataclass (called from ``__post_init__``)."""
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if "help" not in f.metadata:
            continue
        name = f.metadata["flat"] or f.name
        value = getattr(obj, f.name)
        kind, optional = kind_of(hints[f.name])
        if value is None and optional:
            continue
        if kind is tuple and isinstance(value, (str, list)):  # placements: names as a list or comma string
            value = names_value(value)
        elif kind is float and is_real(value):
            try:
                value = float(value)
            except OverflowError:
                raise OptionError(name, f"{name} must be a finite number, got an integer of "
                                        f"{len(str(abs(value)))} digits") from None
        wrong = problem(f, kind, value)
        if wrong:
            raise OptionError(name, f"{name} {wrong}, got {value!r}")
        object.__setattr__(obj, f.name, value)


def problem(f: dataclasses.Field, kind: type, value: Any) -> str | None:
    """What is wrong with a (non-None) value of an option field: its type, choices or check; None if nothing."""
    choices, check = f.metadata["choices"], f.metadata["check"]
    if check is None and not _KIND_TESTS[kind](value):  # a check tests the type itself
        return f"must be {_KIND_WORDS[kind]}"
    if choices and value not in choices:
        return f"must be one of {list(choices)}"
    return check(value) if check else None


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_KIND_WORDS = {int: "an integer", str: "a string", bool: "True or False", float: "a number"}
_KIND_TESTS: dict[type, Callable[[Any], bool]] = {
    int: is_int, float: is_real, str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}


def kind_of(hint: Any) -> tuple[type, bool]:
    """(base type, None allowed) of an annotation such as ``int | None`` or ``str | tuple[str, ...]``."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    optional = type(None) in args
    bases = [a for a in args if a is not type(None)]
    if any(typing.get_origin(b) is tuple for b in bases):
        return tuple, optional
    return bases[0], optional


def names_value(value: str | list | tuple) -> str | tuple[str, ...]:
    """``"seed"`` stays a name; ``"layer3.1,layer4.0"`` and lists become a tuple of stripped names."""
    if isinstance(value, str):
        if "," not in value:
            return value.strip()
        value = value.split(",")
    return tuple(n.strip() if isinstance(n, str) else n for n in value if not isinstance(n, str) or n.strip())
