"""Training recipes as data: each recipe is one :class:`Recipe` declaration, its optimiser and its LR schedule.

A recipe's schedule is a :class:`WarmupCosine` or a :class:`StepDecay`; it gives a pure function
``factor(step) -> multiplier of the peak LR`` for a run of ``epochs`` x ``steps_per_epoch`` steps (easy to test
on its own), wrapped in ``torch.optim.lr_scheduler.LambdaLR`` (stepped once per iteration) so that its state is
saved and restored with the checkpoint. Adding a recipe is one entry of :data:`RECIPES`.

Recipes (the replication's three, plus one for a single fast GPU):

``paper-sgd``  SGD, momentum 0.9, weight decay 5e-4; LR warms up linearly from 0 to 0.2·B/256 over the first 5% of
               the epochs, then cosine decay to 0 (Bello et al.'s CIFAR setting, scaled by batch size B).
``seed-adam``  Adam, LR 1e-3, no weight decay; ×0.1 at epoch 80, ×0.01 at 120, ×0.001 at 160, ×0.0005 at 180 of
               220 (the replication's ResNet schedule); for other lengths the milestones scale proportionally.
``wrn-sgd``    SGD, Nesterov momentum 0.9, LR 0.1, weight decay 5e-4, ×0.2 at 30%, 60% and 80% of the epochs
               (Zagoruyko & Komodakis).
``fast``       SGD, Nesterov momentum 0.9, weight decay 5e-4 (not on BN/bias), label smoothing 0.1, peak LR
               0.1·B/128 after a linear warm-up over the first 2 epochs' worth of steps (at most a quarter of the
               run), then cosine to 0: a short large-batch schedule for one modern GPU.

A run records its recipe resolved (:func:`resolved_recipe`: every field of the declaration, with the peak LR
for its batch and the ``--lr`` / ``--weight-decay`` / ``--label-smoothing`` overrides applied) in
``config.json``; :func:`recipe_differences` compares a recorded one with what a config resolves to now, so a run
made under an older declaration of its recipe is never reused as if it were the same experiment.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from aacn.config import RunConfig

__all__ = ["Recipe", "WarmupCosine", "StepDecay", "RECIPES", "schedule_for", "build_optimizer", "resolved_recipe",
           "recipe_differences", "warmup_cosine", "piecewise"]

Schedule = Callable[[int], float]
PER = ("step", "epoch")


# --------------------------------------------------------------------------------------- schedules (pure)
def warmup_cosine(step: int, *, total: int, warmup: int) -> float:
    """Linear 0→1 over ``warmup`` steps, then cosine 1→0 at ``total``."""
    if warmup > 0 and step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def piecewise(step: int, *, milestones: list[int], factors: list[float]) -> float:
    """``factors[i]`` from ``milestones[i]`` on (1.0 before the first)."""
    value = 1.0
    for milestone, factor in zip(milestones, factors, strict=True):
        if step >= milestone:
            value = factor
    return value


def held_per_epoch(step: int, *, schedule: Schedule, steps_per_epoch: int) -> float:
    """``schedule`` at the first step of ``step``'s epoch: the multiplier changes at epoch boundaries only."""
    return schedule(step - step % steps_per_epoch)


def _to_step(epochs: float, steps_per_epoch: int, per: str) -> int:
    """The step ``epochs`` (a real number of epochs) into a run: rounded to a step, or to a whole epoch."""
    return round(epochs * steps_per_epoch) if per == "step" else round(epochs) * steps_per_epoch


def _check_per(per: str) -> None:
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from 0 to the peak LR, then cosine decay to 0 at the run's last step.

    The warm-up lasts the shortest of those given: ``warmup_fraction`` of the run, ``warmup_epochs`` epochs,
    ``warmup_max_fraction`` of the run's steps (rounded down). ``per``: ``"step"`` (the LR changes every step) or
    ``"epoch"`` (durations round to whole epochs; the LR is held through each epoch).
    """

    shape: ClassVar[str] = "warmup-cosine"
    warmup_fraction: float | None = None
    warmup_epochs: float | None = None
    warmup_max_fraction: float | None = None
    per: str = "step"

    def __post_init__(self) -> None:
        _check_per(self.per)

    def factor(self, *, epochs: int, steps_per_epoch: int) -> Schedule:
        total = epochs * steps_per_epoch
        limits = []
        if self.warmup_fraction is not None:
            limits.append(_to_step(self.warmup_fraction * epochs, steps_per_epoch, self.per))
        if self.warmup_epochs is not None:
            limits.append(_to_step(self.warmup_epochs, steps_per_epoch, self.per))
        if self.warmup_max_fraction is not None:
            limits.append(math.floor(self.warmup_max_fraction * total))
        schedule: Schedule = partial(warmup_cosine, total=total, warmup=min(limits, default=0))
        if self.per == "epoch":
            schedule = partial(held_per_epoch, schedule=schedule, steps_per_epoch=steps_per_epoch)
        return schedule


@dataclass(frozen=True)
class StepDecay:
    """The peak LR times ``factors[i]`` from milestone ``i`` on (times 1 before the first).

    ``milestones`` are epochs of a run ``milestones_of`` epochs long; a run of another length scales them (80 of
    220 is epoch 40 of a 110-epoch run). ``per``: ``"epoch"`` (milestones round to whole epochs) or ``"step"``.
    """

    shape: ClassVar[str] = "step-decay"
    milestones: tuple[float, ...]
    milestones_of: float
    factors: tuple[float, ...]
    per: str = "epoch"

    def __post_init__(self) -> None:
        _check_per(self.per)
        if len(self.milestones) != len(self.factors) or list(self.milestones) != sorted(self.milestones):
            raise ValueError("milestones must be increasing, with one factor each")

    def factor(self, *, epochs: int, steps_per_epoch: int) -> Schedule:
        marks = [_to_step(m / self.milestones_of * epochs, steps_per_epoch, self.per) for m in self.milestones]
        return partial(piecewise, milestones=marks, factors=list(self.factors))


# ------------------------------------------------------------------------------------------- recipes
_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr, recipe: torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum,
                                                      nesterov=recipe.nesterov),
    "adam": lambda groups, lr, recipe: torch.optim.Adam(groups, lr=lr),
}


@dataclass(frozen=True)
class Recipe:
    """One recipe: optimiser, peak LR, weight decay, label smoothing and LR schedule.

    The peak LR is ``lr``, or ``lr * B / lr_batch`` for a global batch ``B`` when ``lr_batch`` is set (the linear
    scaling rule). ``decay_norm_and_bias=False`` exempts 1-d parameters (normalisation scales and shifts, biases)
    from weight decay. ``momentum`` and ``nesterov`` apply to SGD.
    """

    optimizer: str
    lr: float
    schedule: WarmupCosine | StepDecay
    lr_batch: int | None = None
    momentum: float | None = None
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(_OPTIMIZERS)}, got {self.optimizer!r}")

    def peak_lr(self, batch_size: int) -> float:
        return self.lr if self.lr_batch is None else self.lr * batch_size / self.lr_batch


RECIPES: dict[str, Recipe] = {
    "paper-sgd": Recipe("sgd", 0.2, WarmupCosine(warmup_fraction=0.05), lr_batch=256, momentum=0.9,
                        weight_decay=5e-4),
    "seed-adam": Recipe("adam", 1e-3, StepDecay(milestones=(80, 120, 160, 180), milestones_of=220,
                                                factors=(0.1, 0.01, 0.001, 0.0005))),
    "wrn-sgd": Recipe("sgd", 0.1, StepDecay(milestones=(30, 60, 80), milestones_of=100, factors=(0.2, 0.04, 0.008)),
                      momentum=0.9, nesterov=True, weight_decay=5e-4),
    "fast": Recipe("sgd", 0.1, WarmupCosine(warmup_epochs=2, warmup_max_fraction=0.25), lr_batch=128, momentum=0.9,
                   nesterov=True, weight_decay=5e-4, decay_norm_and_bias=False, label_smoothing=0.1),
}


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def schedule_for(recipe: str, *, epochs: int, steps_per_epoch: int) -> Schedule:
    """The per-step LR multiplier of a recipe for a run of ``epochs`` × ``steps_per_epoch`` steps."""
    return _recipe(recipe).schedule.factor(epochs=epochs, steps_per_epoch=steps_per_epoch)


# ------------------------------------------------------------------------------------ what a run records
def resolve(name: str, *, batch_size: int, lr: float | None = None, weight_decay: float | None = None,
            label_smoothing: float | None = None) -> dict[str, Any]:
    """Recipe ``name`` as a run uses it, as plain JSON values: every field of its declaration, the peak LR for
    ``batch_size``, and the given overrides in place of the declared LR, weight decay and label smoothing."""
    spec = _recipe(name)
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "schedule"}
    schedule = {"shape": spec.schedule.shape, **dataclasses.asdict(spec.schedule)}
    resolved = {"name": name, **fields, "peak_lr": spec.peak_lr(batch_size) if lr is None else lr,
                "weight_decay": spec.weight_decay if weight_decay is None else weight_decay,
                "label_smoothing": spec.label_smoothing if label_smoothing is None else label_smoothing,
                "schedule": schedule}
    return json.loads(json.dumps(resolved))  # tuples as lists: as config.json holds it


def resolved_recipe(config: RunConfig) -> dict[str, Any]:
    """The recipe of ``config`` resolved (see :func:`resolve`); raises ``ValueError`` for an unknown recipe."""
    return resolve(config.recipe, batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                   label_smoothing=config.label_smoothing)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


_ABSENT = "(absent)"


def recipe_differences(recorded: Mapping[str, Any] | None, config: RunConfig) -> list[str]:
    """Fields on which a run's recorded recipe differs from what ``config``'s recipe resolves to now, as
    ``recipe <name> <field>: recorded != now``.

    Nothing when there is no recorded recipe (a record written before recipes were recorded: its recipe name is
    compared with the other options), when the names differ (that difference is the config's) or when the
    recipe is unknown now (refused when the run starts).
    """
    if not isinstance(recorded, Mapping) or recorded.get("name") != config.recipe or config.recipe not in RECIPES:
        return []
    then, now = _flatten(recorded), _flatten(resolved_recipe(config))
    return [f"recipe {config.recipe} {key}: {then.get(key, _ABSENT)!r} != {now.get(key, _ABSENT)!r}"
            for key in dict.fromkeys([*now, *then]) if then.get(key, _ABSENT) != now.get(key, _ABSENT)]


# ------------------------------------------------------------------------------------------- builders
def _param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    if decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    recipe: str,
    model: nn.Module,
    *,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float | None = None,
    weight_decay: float | None = None,
    label_smoothing: float | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, dict]:
    """Optimiser, per-step scheduler and the resolved hyper-parameters (for the run's ``info``)."""
    spec = _recipe(recipe)
    resolved = resolve(recipe, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                       label_smoothing=label_smoothing)
    base_lr, wd = resolved["peak_lr"], resolved["weight_decay"]
    optimizer = _OPTIMIZERS[spec.optimizer](_param_groups(model, wd, spec.decay_norm_and_bias), base_lr, spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule_for(recipe, epochs=epochs, steps_per_epoch=steps_per_epoch))
    hyper = {
        "recipe": recipe,
        "optimizer": spec.optimizer + ("-nesterov" if spec.nesterov else ""),
        "base_lr": base_lr,
        "weight_decay": wd,
        "label_smoothing": resolved["label_smoothing"],
        "global_batch_size": batch_size,
    }
    return optimizer, scheduler, hyper
