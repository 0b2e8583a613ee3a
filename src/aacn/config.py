"""RunConfig: everything that determines one training run, saved as ``config.json`` in its run directory.

A run is fully described by this dataclass. The CLI builds it from flags, the experiment presets build it in
code, and ``--resume`` compares the saved one with the requested one field by field (see
:meth:`RunConfig.differences`), so a run is never continued under a different configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aacn.errors import UserError

DATASETS = ("cifar10", "cifar100")
AMP_MODES = ("auto", "bf16", "fp16", "none")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEVICES = ("auto", "cpu", "cuda", "mps")

# Fields that may change between an interrupted run and its resumption without changing the result.
RESUME_MUTABLE = frozenset(
    {"out", "data_dir", "device", "progress", "compile", "compile_mode", "eval_batch_size", "checkpoint_keep"}
)
# model_kwargs that choose how a result is computed, not which (every attention impl computes the same function).
RESUME_MUTABLE_MODEL_KWARGS = frozenset({"attention_impl"})


@dataclass
class RunConfig:
    """One training run.

    ``model_kwargs`` go to :func:`aacn.models.create_model` unchanged (``base_width``, ``stem``, ``dropout``,
    ``attention``, ``relative``, ``num_heads``, ``kappa``, ``upsilon``, ``min_key_depth_per_head``,
    ``attention_impl``). ``lr``/``weight_decay`` override the recipe's defaults when given.
    """

    model: str = "resnet34"
    dataset: str = "cifar10"
    epochs: int = 10
    batch_size: int = 128
    recipe: str = "paper-sgd"
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    augment: bool = True
    normalize: str = "standard"
    subset: int | None = None
    val_size: int = 5000
    split_seed: int = 0
    seed: int = 0
    data_dir: str | None = None
    out: str = "runs/run"
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str = "default"
    tta: bool = False
    sync_bn: bool = False
    eval_batch_size: int = 500
    checkpoint_keep: int = 2
    progress: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> RunConfig:
        """Raise :class:`UserError` for values no run can use; return self."""
        if self.dataset not in DATASETS:
            raise UserError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr!r}")
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.subset is not None and self.subset <= 0:
            raise UserError(f"--subset must be a positive number of images, got {self.subset}")
        if self.val_size < 0:
            raise UserError(f"--val-size must be >= 0, got {self.val_size}")
        if self.amp not in AMP_MODES:
            raise UserError(f"unknown --amp {self.amp!r}; choose one of {', '.join(AMP_MODES)}")
        if self.device not in DEVICES and not self.device.startswith(("cuda:", "mps:")):
            raise UserError(f"unknown --device {self.device!r}; choose one of {', '.join(DEVICES)} or cuda:N")
        if self.compile_mode not in COMPILE_MODES:
            raise UserError(f"unknown --compile-mode {self.compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        if self.compile_mode != "default" and not self.compile:
            raise UserError(f"--compile-mode {self.compile_mode} applies to a compiled model; add --compile")
        if self.checkpoint_keep < 1:
            raise UserError(f"checkpoint_keep must be >= 1, got {self.checkpoint_keep}")
        from aacn.train.recipes import RECIPES  # local import: recipes imports torch

        if self.recipe not in RECIPES:
            raise UserError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"config has unknown fields {unknown}; was it written by a newer aacn?")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"no config at {path}; is this a run directory written by 'aacn train'?") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc.msg}); the run directory is damaged") from None
        return cls.from_dict(data.get("config", data))

    def differences(self, other: RunConfig) -> list[str]:
        """Fields (other than the resume-safe ones) on which two configs differ, as ``name: a != b``."""
        mine, theirs = self.to_dict(), other.to_dict()
        for d in (mine, theirs):
            d["model_kwargs"] = {k: v for k, v in d["model_kwargs"].items() if k not in RESUME_MUTABLE_MODEL_KWARGS}
        return [
            f"{name}: {mine[name]!r} != {theirs[name]!r}"
            for name in mine
            if name not in RESUME_MUTABLE and mine[name] != theirs[name]
        ]
