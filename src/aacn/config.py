"""Typed configuration, each option declared once: :class:`AttentionConfig`, :class:`ModelConfig`, :class:`RunConfig`.

Every option is a dataclass field whose metadata (:func:`aacn.options.option`) holds its help text, its CLI
flag, its check and whether it can change a result. From these declarations come:

- the ``aacn train`` / ``aacn sweep`` flags and their help (:func:`add_arguments`, :func:`config_from_args`);
- the keys a sweep may vary and how their values parse (:data:`SWEEP_KEYS`, :func:`parse_value`);
- the options that cannot change a result (:data:`RESULT_NEUTRAL`), ignored when a finished or interrupted
  run is compared with a requested one (:meth:`RunConfig.differences`);
- ``config.json`` (:meth:`RunConfig.to_dict`, :meth:`RunConfig.from_dict`, which also reads the older flat form).

A :class:`RunConfig` groups its options into the model (``arch``), data, optimisation and system parts, plus
``seed`` and ``out``. Every leaf option also has one flat name (``kappa``, ``epochs``, ``attention_impl``, ...),
unique over the whole run: the CLI dest, the sweep key and the attribute (``config.epochs``) all use it, and
``RunConfig(**flat)`` / :meth:`RunConfig.flat` convert between the two forms.

Configs are frozen and validated when built: a bad value raises :class:`aacn.errors.OptionError` (a
``UserError`` and a ``ValueError``) whose message starts with the option's name. Build the network of a run
with ``aacn.models.create_model(config.arch)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aacn.data.augment import NORMALIZE_MODES
from aacn.data.registry import DATASETS
from aacn.errors import OptionError, UserError
from aacn.files import read_json
from aacn.nn.functional import IMPLS
from aacn.options import (
    at_most,
    is_int,
    is_real,
    kind_of,
    names_value,
    non_negative_int,
    non_negative_number,
    option,
    positive_int,
    positive_number,
    probability,
    problem,
    type_hints,
    validate,
)

__all__ = [
    "CONFIG_FORMAT",
    "AMP_MODES",
    "DEVICES",
    "STEMS",
    "COMPILE_MODES",
    "ATTENTION_KWARGS",
    "option",
    "Option",
    "AttentionConfig",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "SystemConfig",
    "RunConfig",
    "OPTIONS",
    "RESULT_NEUTRAL",
    "RESUME_MUTABLE",
    "SWEEP_KEYS",
    "parse_value",
    "add_arguments",
    "given_options",
    "config_from_args",
]

CONFIG_FORMAT = 2  # version of the config.json layout written by RunConfig.to_dict (1: the flat form)
AMP_MODES = ("auto", "bf16", "fp16", "none")
DEVICES = ("auto", "cpu", "cuda", "mps")
STEMS = ("cifar", "imagenet")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


# ------------------------------------------------------------------------------------------------ checks
# Upper bounds of numeric options: beyond them a value is a typo that would only exhaust memory or overflow.
MAX_SEED = 2**63 - 1  # torch and numpy seeds are 64-bit
MAX_IMAGES = 10**7  # CIFAR has 60,000 images
def fraction(value: Any) -> str | None:
    if not (is_real(value) and 0 < value <= 1):
        return "must be a fraction in (0, 1] (e.g. 0.2; 1 = fully attentional)"
    return None if value >= 1e-3 else "must be at least 0.001 (no attention layer is that thin)"


MAX_WRN_DEPTH = 1000  # layers of a wrn-D-K; WRN-28-10 has 28
MAX_PARAMS = 10**9  # about 4 GB of float32 weights: ~27x WRN-28-10
_WRN = re.compile(r"wrn-(\d{1,12})-(\d{1,12})")


def model_name(value: Any) -> str | None:
    ok = isinstance(value, str) and value.strip()
    if not ok:
        return "must be a model name such as 'resnet34' or 'wrn-28-10'"
    match = _WRN.fullmatch(value.strip().lower())
    if match and int(match.group(1)) > MAX_WRN_DEPTH:
        return f"has depth {int(match.group(1)):,}, beyond the limit of {MAX_WRN_DEPTH:,} layers"
    if value.strip().lower().startswith("wrn-") and not match:
        return "must be wrn-D-K with a depth D and a widen factor K of at most 12 digits, e.g. wrn-28-10"
    return None


def estimated_params(config: ModelConfig) -> float:
    """Roughly the parameters of ``config``'s network (its 3x3 convolutions), computed without building it."""
    match = _WRN.fullmatch(config.name.strip().lower())
    if match:
        blocks, widen = max(0, (int(match.group(1)) - 4) // 6), int(match.group(2))
        width = (config.base_width or 16) * widen
        return 9.0 * 2 * blocks * sum((width * m) ** 2 for m in (1, 2, 4))
    if config.name.strip().lower() == "resnet34":
        return 21.3e6 * ((config.base_width or 64) / 64) ** 2
    return 0.0


def device_name(value: Any) -> str | None:
    if value in DEVICES or (isinstance(value, str) and value.partition(":")[0] in ("cuda", "mps")
                            and value.partition(":")[2].isdigit()):
        return None
    return f"must be one of {', '.join(DEVICES)} or cuda:N"


def _placement_table() -> Any:
    # The table of named placements lives with the models, which import this module: it is read when used.
    from aacn.models import placement_rules

    return placement_rules


def placement_names(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return None
    if isinstance(value, tuple) and value and all(isinstance(n, str) and n for n in value):
        return None
    return f"must be {_placement_table().describe_placements()} or a list of block names"


def placement_help() -> str:
    return f"attention placement: {' | '.join(_placement_table().PLACEMENTS)} | comma-separated block or conv names"


@dataclass(frozen=True)
class AttentionConfig:
    """Where attention goes in a network and how it is shaped (Bello et al. 2019's Nh, kappa, upsilon)."""

    placement: str | tuple[str, ...] = option(
        "none", placement_help, flat="attention", check=placement_names, metavar="PLACEMENT")
    relative: bool = option(True, "relative position embeddings in the attention", flag="--no-relative")
    num_heads: int = option(8, "Nh, attention heads", check=at_most(positive_int, 1024))
    kappa: float = option(0.2, "dk / F_out, key depth as a fraction of the conv's output channels", check=fraction)
    upsilon: float = option(0.1, "dv / F_out, attention channels as a fraction of the conv's outputs",
                            check=fraction)
    min_key_depth_per_head: int = option(20, "smallest key depth per head", check=at_most(positive_int, 4096))
    impl: str = option("auto", "how attention is computed (the same numbers; triton: CUDA only)",
                       flat="attention_impl", choices=IMPLS, neutral=True)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def enabled(self) -> bool:
        return self.placement != "none"

    @classmethod
    def from_kwargs(cls, **options: Any) -> AttentionConfig:
        """From options named as ``create_model`` and the CLI name them (``attention``, ``attention_impl``, ...)."""
        unknown = sorted(set(options) - set(ATTENTION_KWARGS))
        if unknown:
            raise OptionError(unknown[0], f"unknown attention option(s) {unknown}; accepted: {list(ATTENTION_KWARGS)}")
        return cls(**{ATTENTION_KWARGS[name]: value for name, value in options.items()})


ATTENTION_KWARGS = {f.metadata["flat"] or f.name: f.name for f in dataclasses.fields(AttentionConfig)}
"""Attention options by the names ``create_model`` and the CLI use -> AttentionConfig field names."""


@dataclass(frozen=True)
class ModelConfig:
    """A network of the model registry: ``aacn.models.create_model(ModelConfig(...))`` builds it.

    ``base_width``, ``stem`` and ``dropout`` are ``None`` for "the family's own" (ResNet base width 64 and the
    CIFAR stem; WRN base width 16 and no dropout); ``stem`` applies to ResNets only, ``dropout`` to WRNs only.
    """

    name: str = option("resnet34", "resnet34 or wrn-D-K, e.g. wrn-28-10", flat="model", check=model_name)
    num_classes: int = option(10, "classifier outputs", check=positive_int, run=False)
    base_width: int | None = option(None, "stage-1 width: narrows or widens the network",
                                    check=at_most(positive_int, 4096),
                                    default_text="the model family's")
    stem: str | None = option(None, "ResNet stem", choices=STEMS, default_text="cifar")
    dropout: float | None = option(None, "WRN dropout between the convs of a block", check=probability,
                                   default_text="0")
    input_size: int = option(32, "side of the square input images", check=positive_int, run=False)
    in_channels: int = option(3, "channels of the input images", check=positive_int, run=False)
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        if isinstance(self.attention, Mapping):
            object.__setattr__(self, "attention", AttentionConfig(**self.attention))
        validate(self)
        params = estimated_params(self)
        if params > MAX_PARAMS:  # refused before anything is built: it would only exhaust memory
            raise OptionError("model", f"model {self.name} (base width {self.base_width or 'default'}) would have "
                                       f"about {params:.1e} parameters, beyond the limit of {MAX_PARAMS:.0e}; "
                                       "choose a smaller depth, widen factor or --base-width")


@dataclass(frozen=True)
class DataConfig:
    """Which images a run trains and evaluates on, and how they are prepared."""

    dataset: str = option("cifar10", "dataset", choices=DATASETS)  # the registry: later entries count too
    augment: bool = option(True, "random flip, pad and crop of the training images", flag="--no-augment")
    normalize: str = option("standard", "standard: per-channel mean/std; seed: /255 minus the per-pixel mean "
                            "(the replication's)", choices=NORMALIZE_MODES)
    subset: int | None = option(None, "train on the first N training images only",
                                check=at_most(positive_int, MAX_IMAGES),
                                default_text="all")
    val_size: int = option(5000, "held-out validation images", check=at_most(non_negative_int, MAX_IMAGES))
    split_seed: int = option(0, "seed of the train/validation split", check=at_most(non_negative_int, MAX_SEED))
    data_dir: str | None = option(None, "where CIFAR lives or is downloaded", neutral=True, sweep=False,
                                  default_text="$AACN_DATA, else a cache")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class OptimConfig:
    """How long and how a run trains: epochs, global batch and a recipe (optimiser + LR schedule)."""

    epochs: int = option(10, "training epochs", check=at_most(positive_int, 100_000))
    batch_size: int = option(128, "global batch size", check=at_most(positive_int, MAX_IMAGES))
    recipe: str = option("paper-sgd", "training recipe (optimiser and LR schedule, see aacn.train.recipes)")
    lr: float | None = option(None, "base learning rate", check=at_most(positive_number, 1000.0),
                              default_text="the recipe's")
    weight_decay: float | None = option(None, "weight decay", check=at_most(non_negative_number, 10.0),
                                        default_text="the recipe's")
    label_smoothing: float | None = option(None, "label smoothing", check=probability, default_text="the recipe's")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class SystemConfig:
    """Where and how fast a run computes, and what else is measured."""

    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps", check=device_name, neutral=True, sweep=False)
    amp: str = option("auto", "mixed precision (auto: bf16 on CUDA)", choices=AMP_MODES, sweep=False)
    channels_last: bool | None = option(None, "channels-last memory format", sweep=False,
                                        default_text="on for CUDA")
    compile: bool = option(False, "torch.compile the model", neutral=True, sweep=False)
    compile_mode: str = option("default", "torch.compile mode", choices=COMPILE_MODES, neutral=True, sweep=False)
    sync_bn: bool = option(False, "SyncBatchNorm under torchrun", sweep=False)
    eval_batch_size: int = option(500, "batch size of evaluation", check=at_most(positive_int, MAX_IMAGES),
                                  neutral=True, sweep=False)
    tta: bool = option(False, "also evaluate the test set with flip test-time augmentation", sweep=False)
    checkpoint_keep: int = option(2, "checkpoints kept", check=at_most(positive_int, 10_000), neutral=True,
                                  sweep=False, cli=False)
    progress: bool = option(True, "progress bars", flag="--no-progress", neutral=True, sweep=False)
    tensorboard: bool = option(False, "also write TensorBoard logs (per-step loss and LR, per-epoch metrics) to "
                               "RUN/tensorboard/; needs the tensorboard package", neutral=True, sweep=False)

    def __post_init__(self) -> None:
        validate(self)
        if self.compile_mode != "default" and not self.compile:
            raise OptionError("compile_mode", f"compile_mode {self.compile_mode!r} applies to compiled models only; "
                                              "add --compile")


_GROUPS = {"arch": ModelConfig, "data": DataConfig, "optim": OptimConfig, "system": SystemConfig}


@dataclass(frozen=True, init=False)
class RunConfig:
    """One training run: everything that determines it, saved as ``config.json`` in its run directory.

    Build it from groups (``RunConfig(arch=ModelConfig(...), optim=OptimConfig(epochs=3))``), from flat option
    names (``RunConfig(model="wrn-28-10", epochs=3, attention="paper")``) or both (flat names win). Every flat
    option is also an attribute: ``config.epochs``, ``config.kappa``, ``config.model`` (the model's name).
    ``model_kwargs`` (the older form: a dict of ``create_model`` keyword arguments) is still accepted.
    """

    arch: ModelConfig
    data: DataConfig
    optim: OptimConfig
    system: SystemConfig
    seed: int = option(0, "seed of the weights and of the data order", check=at_most(non_negative_int, MAX_SEED))
    out: str = option("runs/run", "run directory", neutral=True, sweep=False, cli=False)

    def __init__(self, **kwargs: Any) -> None:
        legacy = kwargs.pop("model_kwargs", None) or {}
        groups = {name: kwargs.pop(name, None) or cls() for name, cls in _GROUPS.items()}
        for name, value in groups.items():
            if isinstance(value, Mapping):
                groups[name] = _GROUPS[name](**value)
        flat = {**legacy, **kwargs}
        unknown = sorted(set(flat) - set(OPTIONS))
        if unknown:
            raise OptionError(unknown[0], f"unknown option(s) {unknown}; valid: {', '.join(OPTIONS)}")
        by_group: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            by_group.setdefault(OPTIONS[name].group, {})[name] = value
        for name, group in groups.items():
            object.__setattr__(self, name, _replace_flat(group, by_group.get(name, {})))
        top = by_group.get("", {})
        object.__setattr__(self, "seed", top.get("seed", 0))
        object.__setattr__(self, "out", str(top.get("out", "runs/run")))
        entry = DATASETS[self.data.dataset]  # the dataset decides the classes and the input's size and channels
        shape = {"num_classes": entry.num_classes, "input_size": entry.image_size, "in_channels": entry.channels}
        if any(getattr(self.arch, name) != value for name, value in shape.items()):
            object.__setattr__(self, "arch", dataclasses.replace(self.arch, **shape))
        validate(self)

    # ---------------------------------------------------------------------------------------- flat view
    def flat(self) -> dict[str, Any]:
        """Every option by its flat name, in declaration order (model, data, optimisation, system, seed, out)."""
        return {name: opt.get(self) for name, opt in OPTIONS.items()}

    def replace(self, **flat: Any) -> RunConfig:
        """A copy with some options changed, given by flat name (``config.replace(epochs=3, kappa=0.1)``)."""
        return RunConfig(**{**self.flat(), **flat})

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> RunConfig:
        return cls(**flat)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The model as ``create_model(config.model, num_classes, **config.model_kwargs)`` keyword arguments."""
        return model_kwargs(self.arch)

    def differences(self, other: RunConfig, *, ignore: Iterable[str] = ()) -> list[str]:
        """Options on which two configs differ, as ``name: a != b``, leaving out :data:`RESULT_NEUTRAL` and
        ``ignore``."""
        skip = RESULT_NEUTRAL | set(ignore)
        mine, theirs = self.flat(), other.flat()
        return [f"{name}: {mine[name]!r} != {theirs[name]!r}" for name in mine
                if name not in skip and mine[name] != theirs[name]]

    # -------------------------------------------------------------------------------------- config.json
    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form: ``{"format": 2, "arch": {...}, "data": {...}, ...}``."""
        data = {"format": CONFIG_FORMAT, **dataclasses.asdict(self)}
        del data["arch"]["num_classes"], data["arch"]["in_channels"]  # decided by the dataset
        data["arch"]["attention"]["placement"] = _jsonable(self.arch.attention.placement)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Read :meth:`to_dict`'s form, or the older flat form (``{"model": ..., "model_kwargs": {...}}``)."""
        if not isinstance(data, Mapping):
            raise UserError(f"a config must be a JSON object, got {type(data).__name__}")
        if "format" not in data:
            return cls(**data)
        version = data["format"]
        if not is_int(version) or version > CONFIG_FORMAT:
            raise UserError(f"config format {version!r} is newer than this aacn reads ({CONFIG_FORMAT}); "
                            "upgrade aacn")
        unknown = sorted(set(data) - {"format", "seed", "out", *_GROUPS})
        if unknown:
            raise UserError(f"config has unknown fields {unknown}; was it written by a newer aacn?")
        groups = {}
        for name, group_cls in _GROUPS.items():
            values = data.get(name) or {}
            if not isinstance(values, Mapping):
                raise UserError(f"config field {name!r} must be an object, got {values!r}")
            known = {f.name for f in dataclasses.fields(group_cls)}
            extra = sorted(set(values) - known)
            if extra:
                raise UserError(f"config {name} has unknown fields {extra}; was it written by a newer aacn?")
            try:
                groups[name] = group_cls(**values)
            except TypeError as exc:
                raise UserError(f"config field {name!r} is malformed ({exc})") from None
        return cls(**groups, **{k: data[k] for k in ("seed", "out") if k in data})

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """The config of ``config.json`` at ``path`` (its ``"config"`` entry, or the whole file)."""
        path = Path(path)
        try:
            data = read_json(path)  # bounded: size, depth, integers
        except FileNotFoundError:
            raise UserError(f"no config at {path}; is this a run directory written by 'aacn train'?") from None
        if isinstance(data, Mapping) and "config" in data:
            data = data["config"]
        try:
            return cls.from_dict(data)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None

    def validate(self) -> RunConfig:
        """Returns self: a RunConfig is checked when it is built, so an existing one is valid."""
        return self


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _replace_flat(group: Any, flat: Mapping[str, Any], depth: int = 1) -> Any:
    """``group`` (at ``depth`` below the RunConfig) with options given by flat name replaced, nested ones too."""
    if not flat:
        return group
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        path = OPTIONS[name].path[depth:]
        if len(path) == 1:
            changes[path[0]] = value
        else:
            nested.setdefault(path[0], {})[name] = value
    for attr, sub in nested.items():
        changes[attr] = _replace_flat(getattr(group, attr), sub, depth + 1)
    return dataclasses.replace(group, **changes)


def model_kwargs(config: ModelConfig) -> dict[str, Any]:
    """``create_model(config.name, config.num_classes, **model_kwargs(config))`` builds ``config``'s network
    (family options left at ``None`` are omitted)."""
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in ("name", "num_classes", "attention") and getattr(config, f.name) is not None}
    kwargs.update({name: _jsonable(getattr(config.attention, attr)) for name, attr in ATTENTION_KWARGS.items()})
    return kwargs


# --------------------------------------------------------------------------------------- derived tables
@dataclass(frozen=True)
class Option:
    """One leaf option of a :class:`RunConfig`: its flat name, where it lives, and its declaration."""

    name: str
    path: tuple[str, ...]  # attributes from the RunConfig down to the field, e.g. ("arch", "attention", "kappa")
    field: dataclasses.Field
    kind: type
    optional: bool

    @property
    def group(self) -> str:
        """``"arch"``, ``"data"``, ``"optim"``, ``"system"``, or ``""`` for a field of the RunConfig itself."""
        return self.path[0] if len(self.path) > 1 else ""

    @property
    def default(self) -> Any:
        return self.field.default

    @property
    def neutral(self) -> bool:
        return self.field.metadata["neutral"]

    def get(self, config: RunConfig) -> Any:
        value: Any = config
        for attr in self.path:
            value = getattr(value, attr)
        return _jsonable(value)


def _leaves(cls: type, path: tuple[str, ...]) -> Iterable[Option]:
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], (*path, f.name))
        elif f.metadata.get("run"):
            kind, optional = kind_of(hints[f.name])
            yield Option(f.metadata["flat"] or f.name, (*path, f.name), f, kind, optional)


def _options() -> dict[str, Option]:
    found: dict[str, Option] = {}
    for opt in _leaves(RunConfig, ()):
        if opt.name in found:
            raise AssertionError(f"option name {opt.name!r} is declared twice")
        found[opt.name] = opt
    return found


OPTIONS: dict[str, Option] = _options()
"""Every leaf option of a run, by flat name."""

RESULT_NEUTRAL = frozenset(name for name, opt in OPTIONS.items() if opt.neutral)
"""Options that cannot change a result: ignored when a saved run is compared with a requested one."""
RESUME_MUTABLE = RESULT_NEUTRAL  # what may change when an interrupted run is resumed

SWEEP_KEYS: dict[str, Option] = {name: opt for name, opt in OPTIONS.items() if opt.field.metadata["sweep"]}
"""Options ``aacn sweep --grid`` may vary."""

for _name, _opt in OPTIONS.items():  # config.epochs, config.kappa, config.model, ...
    if not hasattr(RunConfig, _name):
        setattr(RunConfig, _name, property(_opt.get, doc=_opt.field.metadata["help"]
                                           if isinstance(_opt.field.metadata["help"], str) else None))


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_value(name: str, text: str) -> Any:
    """The value of option ``name`` written as text (``"none"`` for an option that may be unset).

    Raises ``ValueError`` saying what the text should be (the value itself is checked when a config is built).
    """
    opt = OPTIONS[name]
    text = text.strip()
    if opt.optional and text.lower() == "none":
        return None
    if opt.kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"expected true or false, got {text!r}")
    if opt.kind is tuple:
        return names_value(text)
    if opt.kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if opt.kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    return text


def check_value(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for option ``name`` on its own (choices and check), or None."""
    opt = OPTIONS[name]
    return None if value is None and opt.optional else problem(opt.field, opt.kind, value)


# ------------------------------------------------------------------------------------------------- CLI
_GROUP_TITLES = {"data": "data", "optim": "optimisation", "system": "system", "": "run", "arch": "model"}


def flag_of(name: str) -> str:
    """The CLI flag of option ``name`` (``--no-augment`` for augment, ``--attention-impl`` for attention_impl)."""
    opt = OPTIONS[name]
    return opt.field.metadata["flag"] or "--" + name.replace("_", "-")


def _arg_type(name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = parse_value(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        problem = None if OPTIONS[name].field.metadata["choices"] else check_value(name, value)  # argparse checks
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    convert.__name__ = OPTIONS[name].kind.__name__
    return convert


def _help(opt: Option) -> str:
    meta = opt.field.metadata
    text = meta["help"]() if callable(meta["help"]) else meta["help"]
    default = meta["default_text"] if opt.default is None else opt.default
    if opt.kind is bool and opt.default is True:
        return f"no {text}" if meta["flag"] and meta["flag"].startswith("--no-") else text
    if opt.kind is bool and opt.default is False:
        return text
    return f"{text} (default {default})" if default is not None else text


def add_arguments(parser: argparse.ArgumentParser, *, choices: Mapping[str, Iterable[str]] | None = None,
                  only: Iterable[str] | None = None) -> None:
    """Add a flag for every run option (grouped: data, optimisation, system, run, model), or for those in ``only``.

    Flags left out of the command line are absent from the parsed namespace (``argparse.SUPPRESS``), so
    :func:`given_options` returns exactly what the user typed. ``choices`` adds allowed values to options whose
    values a higher layer knows (``{"recipe": RECIPES}``).
    """
    choices = dict(choices or {})
    wanted = set(OPTIONS if only is None else only)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in sorted(OPTIONS.values(), key=lambda o: list(_GROUP_TITLES).index(o.group)):
        meta = opt.field.metadata
        if not meta["cli"] or opt.name not in wanted:
            continue
        title = _GROUP_TITLES[opt.group]
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        flag, help_text = flag_of(opt.name), _help(opt)
        common: dict[str, Any] = {"dest": opt.name, "default": argparse.SUPPRESS, "help": help_text}
        if opt.kind is bool and opt.optional:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif opt.kind is bool:
            group.add_argument(flag, action="store_false" if opt.default else "store_true", **common)
        else:
            allowed = meta["choices"] or (tuple(choices[opt.name]) if opt.name in choices else None)
            group.add_argument(flag, type=_arg_type(opt.name), choices=allowed, metavar=meta["metavar"],
                               **common)


def given_options(args: argparse.Namespace, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The run options given as flags (see :func:`add_arguments`; those in ``only``), by flat name."""
    wanted = set(OPTIONS if only is None else only)
    return {name: getattr(args, name) for name, opt in OPTIONS.items()
            if opt.field.metadata["cli"] and name in wanted and hasattr(args, name)}


def config_from_args(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> RunConfig:
    """The RunConfig of the given flags on top of ``defaults`` (flat names) and the declared defaults."""
    return RunConfig(**{**(defaults or {}), **given_options(args)})
