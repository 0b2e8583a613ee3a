"""How a configuration option is declared and checked: :func:`option`, :class:`Option`, :func:`validate`.

:func:`option` makes a dataclass field that holds everything about an option; :func:`options_of` lists a config
class's options; :func:`validate` checks and normalises them and raises :class:`aacn.errors.OptionError`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aacn.errors import OptionError

__all__ = ["Option", "option", "options_of", "validate", "names_value", "at_most", "is_int", "is_real",
           "positive_int", "non_negative_int", "positive_number", "non_negative_number", "probability"]

Check = Callable[[Any], "str | None"]  # what is wrong with a value ("must be ..."), or None; the caller names it


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check(test: Callable[[Any], bool], wrong: str) -> Check:
    return lambda value: None if test(value) else wrong


positive_int = _check(lambda v: is_int(v) and v > 0, "must be a positive integer")
non_negative_int = _check(lambda v: is_int(v) and v >= 0, "must be an integer >= 0")
positive_number = _check(lambda v: is_real(v) and math.isfinite(v) and v > 0, "must be a positive number")
non_negative_number = _check(lambda v: is_real(v) and math.isfinite(v) and v >= 0, "must be a number >= 0")
probability = _check(lambda v: is_real(v) and 0 <= v < 1, "must be a probability in [0, 1)")


def at_most(check: Check, limit: float) -> Check:
    """``check``, and no more than ``limit``: beyond any sane run, such values only exhaust memory or overflow."""
    return lambda value: check(value) or (None if value <= limit else f"must be at most {limit:,} (a sane limit)")


def option(default: Any = None, help: str | Callable[[], str] = "", *, group: str | None = None,
           flag: str | None = None, choices: Iterable[str] | None = None, check: Check | None = None,
           neutral: bool = False, sweep: bool = True, cli: bool = True, default_text: str | None = None,
           metavar: str | None = None) -> Any:
    """A config field with everything about the option in one place.

    ``help``: CLI help (the default is appended), or a function returning it (help naming values of a higher
    layer). ``group``: this option's and the following ones' help section, and their object in the nested format-2
    ``config.json`` (``"arch.attention"``). ``flag``: when not ``--<name-with-dashes>``. ``choices``: the allowed
    values (a mapping, a registry such as ``aacn.data.DATASETS``, stays live). ``check``: what is wrong with a value,
    or None. ``neutral``: cannot change a result (where files go, how fast it runs). ``sweep``: ``aacn sweep
    --grid`` may vary it. ``cli``: has a flag. ``default_text``: how help names a ``None`` default.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "group": group, "flag": flag, "check": check,
        "choices": choices if isinstance(choices, Mapping) else tuple(choices) if choices else None,
        "neutral": neutral, "sweep": sweep, "cli": cli, "default_text": default_text, "metavar": metavar})


_KINDS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    int: ("an integer", is_int), float: ("a number", is_real), str: ("a string", lambda v: isinstance(v, str)),
    bool: ("True or False", lambda v: isinstance(v, bool))}
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a config class: name, group (see :func:`option`), kind (``int | None``: int, optional; a
    placement, one name or a tuple of names: tuple), default and declaration."""

    name: str
    group: str
    kind: type
    optional: bool
    default: Any
    meta: Mapping[str, Any]

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this option on its own (type, choices, check), or None."""
        if value is None and self.optional:
            return None
        if self.meta["check"] is None and not _KINDS[self.kind][1](value):  # a check tests the type itself
            return f"must be {_KINDS[self.kind][0]}"
        if self.meta["choices"] and value not in self.meta["choices"]:
            return f"must be one of {list(self.meta['choices'])}"
        return self.meta["check"](value) if self.meta["check"] else None

    def parse(self, text: str) -> Any:
        """The value written as ``text`` (``"none"``: unset); ``ValueError`` says what the text should be."""
        text = text.strip()
        if self.optional and text.lower() == "none":
            return None
        if self.kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError(f"expected true or false, got {text!r}")
        if self.kind is tuple:
            return names_value(text)
        try:
            return self.kind(text)
        except ValueError:
            raise ValueError(f"expected {_KINDS[self.kind][0]}, got {text!r}") from None


@functools.cache
def options_of(cls: type) -> dict[str, Option]:
    """The options of a config dataclass, by name, in declaration order (base classes' first)."""
    hints, group, found = typing.get_type_hints(cls), "", {}
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            hint = hints[f.name]
            union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
            args = typing.get_args(hint) if union else (hint,)
            kinds = [tuple if typing.get_origin(a) is tuple else a for a in args if a is not type(None)]
            kind = tuple if tuple in kinds else kinds[0]  # str | tuple[str, ...]: one name or several
            group = group if f.metadata["group"] is None else f.metadata["group"]
            found[f.name] = Option(f.name, group, kind, type(None) in args, f.default, f.metadata)
    return found


def validate(obj: Any) -> None:
    """Check and normalise every option field of a config dataclass (called from ``__post_init__``)."""
    for name, opt in options_of(type(obj)).items():
        value = getattr(obj, name)
        if opt.kind is tuple and isinstance(value, (str, list)):  # placements: names as a list or comma string
            value = names_value(value)
        elif opt.kind is float and is_real(value):
            try:
                value = float(value)
            except OverflowError:
                raise OptionError(name, f"{name} must be a finite number, got an integer too large") from None
        wrong = opt.problem(value)
        if wrong:
            raise OptionError(name, f"{name} {wrong}, got {value!r}")
        object.__setattr__(obj, name, value)


def names_value(value: str | list | tuple) -> str | tuple[str, ...]:
    """``"seed"`` stays a name; ``"layer3.1,layer4.0"`` and lists become a tuple of stripped names."""
    if isinstance(value, str):
        if "," not in value:
            return value.strip()
        value = value.split(",")
    return tuple(n.strip() if isinstance(n, str) else n for n in value if not isinstance(n, str) or n.strip())
