"""The options of a training run, each declared once (:func:`aacn.options.option`) in :class:`RunConfig`.

The network's options are inherited (:class:`aacn.models.config.ModelOptions`); the CLI flags (:mod:`aacn.flags`),
:data:`SWEEP_KEYS` and :data:`RESULT_NEUTRAL` derive from the declarations. ``config.json`` is written flat
(format 3); the nested format 2 and the flat form 1 (model options in ``model_kwargs``) still read. A bad value
raises :class:`aacn.errors.OptionError` (a ``UserError`` and a ``ValueError``) naming the option first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aacn.data.augment import NORMALIZE_MODES
from aacn.data.registry import DATASETS
from aacn.errors import OptionError, UserError
from aacn.files import read_json
from aacn.models.config import ModelConfig, ModelOptions
from aacn.options import (
    at_most,
    non_negative_int,
    non_negative_number,
    option,
    options_of,
    positive_int,
    positive_number,
    probability,
)

__all__ = ["CONFIG_FORMAT", "AMP_MODES", "DEVICES", "COMPILE_MODES", "RunConfig", "OPTIONS",
           "RESULT_NEUTRAL", "SWEEP_KEYS", "FORMAT2_PATHS"]

CONFIG_FORMAT = 3  # the config.json layout RunConfig.to_dict writes (2: nested objects; 1: flat, no "format")
AMP_MODES = ("auto", "bf16", "fp16", "none")
DEVICES = ("auto", "cpu", "cuda", "mps")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
MAX_SEED = 2**63 - 1  # torch and numpy seeds are 64-bit; beyond the limits a value is a typo
MAX_IMAGES = 10**7  # CIFAR has 60,000 images


def device_name(value: Any) -> str | None:
    kind, _, index = value.partition(":") if isinstance(value, str) else ("", "", "")
    ok = value in DEVICES or (kind in ("cuda", "mps") and index.isdigit())
    return None if ok else f"must be one of {', '.join(DEVICES)} or cuda:N"


@dataclass(frozen=True)
class RunConfig(ModelOptions):
    """One training run: everything that determines it, saved as ``config.json`` in its run directory.

    ``RunConfig(model="wrn-28-10", epochs=3, attention="paper")``; ``config.replace(epochs=5)`` for a copy.
    """

    dataset: str = option("cifar10", "dataset", group="data", choices=DATASETS)  # the registry: later entries too
    augment: bool = option(True, "random flip, pad and crop of the training images", flag="--no-augment")
    normalize: str = option("standard", "standard: per-channel mean/std; seed: /255 minus the per-pixel mean "
                            "(the replication's)", choices=NORMALIZE_MODES)
    subset: int | None = option(None, "train on the first N training images only",
                                check=at_most(positive_int, MAX_IMAGES), default_text="all")
    val_size: int = option(5000, "held-out validation images", check=at_most(non_negative_int, MAX_IMAGES))
    split_seed: int = option(0, "seed of the train/validation split", check=at_most(non_negative_int, MAX_SEED))
    data_dir: str | None = option(None, "where CIFAR lives or is downloaded", neutral=True, sweep=False,
                                  default_text="$AACN_DATA, else a cache")
    epochs: int = option(10, "training epochs", group="optim", check=at_most(positive_int, 100_000))
    batch_size: int = option(128, "global batch size", check=at_most(positive_int, MAX_IMAGES))
    recipe: str = option("paper-sgd", "training recipe (optimiser and LR schedule, see aacn.train.recipes)")
    lr: float | None = option(None, "base learning rate", check=at_most(positive_number, 1000.0),
                              default_text="the recipe's")
    weight_decay: float | None = option(None, "weight decay", check=at_most(non_negative_number, 10.0),
                                        default_text="the recipe's")
    label_smoothing: float | None = option(None, "label smoothing", check=probability, default_text="the recipe's")
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps", group="system", check=device_name, neutral=True,
                         sweep=False)
    amp: str = option("auto", "mixed precision (auto: bf16 on CUDA)", choices=AMP_MODES, sweep=False)
    channels_last: bool | None = option(None, "channels-last memory format", sweep=False, default_text="on for CUDA")
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
    seed: int = option(0, "seed of the weights and of the data order", group="",
                       check=at_most(non_negative_int, MAX_SEED))
    out: str = option("runs/run", "run directory", neutral=True, sweep=False, cli=False)

    def __post_init__(self) -> None:
        if isinstance(self.out, os.PathLike):
            object.__setattr__(self, "out", os.fspath(self.out))
        super().__post_init__()
        if self.compile_mode != "default" and not self.compile:
            raise OptionError("compile_mode", f"compile_mode {self.compile_mode!r} applies to compiled models only; "
                                              "add --compile")

    @property
    def arch(self) -> ModelConfig:
        """The run's network, for ``create_model``, with its dataset's classes, image size and channels."""
        entry = DATASETS[self.dataset]
        return ModelConfig(**{name: getattr(self, name) for name in options_of(ModelOptions)},
                           num_classes=entry.num_classes, input_size=entry.image_size, in_channels=entry.channels)

    def flat(self) -> dict[str, Any]:
        """Every option by name, in declaration order, as JSON values (a list of block names, not a tuple)."""
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in OPTIONS}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some options changed (``config.replace(epochs=3, kappa=0.1)``)."""
        unknown = sorted(set(changes) - set(OPTIONS))
        if unknown:
            raise OptionError(unknown[0], f"unknown option(s) {unknown}; valid: {', '.join(OPTIONS)}")
        return dataclasses.replace(self, **changes)

    def differences(self, other: RunConfig, *, ignore: Iterable[str] = ()) -> list[str]:
        """Options on which two configs differ (``name: a != b``), except :data:`RESULT_NEUTRAL` and ``ignore``."""
        skip = RESULT_NEUTRAL | set(ignore)
        mine, theirs = self.flat(), other.flat()
        return [f"{name}: {mine[name]!r} != {theirs[name]!r}" for name in mine
                if name not in skip and mine[name] != theirs[name]]

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form: ``{"format": 3, "model": ..., "epochs": ..., ...}``."""
        return {"format": CONFIG_FORMAT, **self.flat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Read format 3, 2 or 1; absent options take their defaults (:mod:`aacn.train.rundir` refuses those)."""
        if not isinstance(data, Mapping):
            raise UserError(f"a config must be a JSON object, got {type(data).__name__}")
        version = data.get("format", 1)
        if type(version) is not int or version > CONFIG_FORMAT:
            raise UserError(f"config format {version!r} is newer than this aacn reads ({CONFIG_FORMAT}); "
                            "upgrade aacn")
        flat = _from_format2(data) if version == 2 else {k: v for k, v in data.items() if k != "format"}
        if version == 1:
            kwargs = flat.pop("model_kwargs", None) or {}
            if not isinstance(kwargs, Mapping):
                raise UserError(f"config field 'model_kwargs' must be an object, got {kwargs!r}")
            flat = {**kwargs, **flat}
        unknown = sorted(set(flat) - set(OPTIONS))
        if unknown:
            raise UserError(f"config has unknown fields {unknown}; was it written by a newer aacn?")
        return cls(**flat)

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


OPTIONS = options_of(RunConfig)
"""Every option of a run, by name."""
RESULT_NEUTRAL = frozenset(name for name, opt in OPTIONS.items() if opt.meta["neutral"])
"""Options that cannot change a result: ignored when a saved run is compared with a requested one."""
SWEEP_KEYS = {name: opt for name, opt in OPTIONS.items() if opt.meta["sweep"]}
"""Options ``aacn sweep --grid`` may vary."""

_RENAMED = {"model": "name", "attention": "placement", "attention_impl": "impl"}  # format-2 names
FORMAT2_PATHS = {name: (*filter(None, opt.group.split(".")), _RENAMED.get(name, name)) for name, opt in OPTIONS.items()}
"""Where each option was in a format-2 config: ``("arch", "attention", "placement")`` for ``attention``."""
# not options: the version, and the network sizes that the dataset now decides
_NOT_OPTIONS = {("format",), *(("arch", name) for name in ("num_classes", "input_size", "in_channels"))}


def _from_format2(data: Mapping[str, Any]) -> dict[str, Any]:
    """A format-2 config by option name; an unknown field keeps its dotted path (``from_dict`` refuses it)."""
    names = {path: name for name, path in FORMAT2_PATHS.items()}
    objects = {path[:i] for path in names for i in range(1, len(path))}
    flat: dict[str, Any] = {}

    def walk(node: Any, where: tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            raise UserError(f"config field {'.'.join(where)!r} must be an object, got {node!r}")
        for key, value in node.items():
            path = (*where, key)
            if path in objects:
                walk(value, path)
            elif path not in _NOT_OPTIONS:
                flat[names.get(path, ".".join(path))] = value

    walk(data, ())
    return flat
