"""The command-line flags of a run, derived from the option declarations of :mod:`aacn.config`.

:func:`add_arguments` adds one flag per option (``--epochs``, ``--no-augment``, ``--attention-impl``) in help
sections (data, optimisation, system, run, model), each parsed and checked by its option so a bad value is one
argparse line; :func:`given_options` returns what the user typed (flags left out are absent, not defaults) and
:func:`config_from_args` the resulting :class:`~aacn.config.RunConfig`.

The flags are derived by hand (about 40 lines): tyro, simple-parsing or jsonargparse would need the same
per-option metadata to keep the flag names (``--no-augment``), the one-line errors, the help sections and the
``argparse.SUPPRESS`` defaults :func:`given_options` relies on, and would add a dependency without removing code.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterable, Mapping
from typing import Any

from aacn.config import OPTIONS, RunConfig
from aacn.options import Option

__all__ = ["flag_of", "add_arguments", "given_options", "config_from_args"]

_TITLES = {"data": "data", "optim": "optimisation", "system": "system", "": "run", "arch": "model"}  # in --help


def flag_of(name: str) -> str:
    """The CLI flag of option ``name`` (``--no-augment`` for augment, ``--attention-impl`` for attention_impl)."""
    return OPTIONS[name].meta["flag"] or "--" + name.replace("_", "-")


def _value(opt: Option, text: str) -> Any:  # a flag's value: parsed and checked (argparse checks choices)
    try:
        value = opt.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    problem = None if opt.meta["choices"] else opt.problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return value


def _help(opt: Option) -> str:
    text = opt.meta["help"]() if callable(opt.meta["help"]) else opt.meta["help"]
    if opt.kind is bool and opt.default is not None:
        return f"no {text}" if opt.default and (opt.meta["flag"] or "").startswith("--no-") else text
    default = opt.meta["default_text"] if opt.default is None else opt.default
    return f"{text} (default {default})" if default is not None else text


def add_arguments(parser: argparse.ArgumentParser, *, choices: Mapping[str, Iterable[str]] | None = None,
                  only: Iterable[str] | None = None) -> None:
    """Add a flag for every run option (grouped: data, optimisation, system, run, model), or for those in ``only``.

    A flag left out of the command line is absent from the namespace (``argparse.SUPPRESS``): :func:`given_options`
    is what the user typed. ``choices`` adds values a higher layer knows (``{"recipe": RECIPES}``)."""
    wanted, sections = set(OPTIONS if only is None else only), {}
    for opt in sorted(OPTIONS.values(), key=lambda o: list(_TITLES).index(o.group.split(".")[0])):
        if opt.meta["cli"] and opt.name in wanted:
            title = _TITLES[opt.group.split(".")[0]]
            section = sections.get(title) or sections.setdefault(title, parser.add_argument_group(title))
            kwargs: dict[str, Any] = {"dest": opt.name, "default": argparse.SUPPRESS, "help": _help(opt)}
            if opt.kind is bool:
                kwargs["action"] = (argparse.BooleanOptionalAction if opt.optional else
                                    "store_false" if opt.default else "store_true")
            else:
                allowed = opt.meta["choices"] or (tuple(choices[opt.name]) if opt.name in (choices or {}) else None)
                kwargs.update(type=functools.partial(_value, opt), choices=allowed, metavar=opt.meta["metavar"])
            section.add_argument(flag_of(opt.name), **kwargs)


def given_options(args: argparse.Namespace, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The run options given as flags (see :func:`add_arguments`; those in ``only``), by name."""
    wanted = set(OPTIONS if only is None else only)
    return {name: getattr(args, name) for name, opt in OPTIONS.items()
            if opt.meta["cli"] and name in wanted and hasattr(args, name)}


def config_from_args(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> RunConfig:
    """The RunConfig of the given flags on top of ``defaults`` (option names) and the declared defaults."""
    return RunConfig(**{**(defaults or {}), **given_options(args)})
