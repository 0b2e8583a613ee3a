"""Training recipes: an optimiser plus a ``torch.optim.lr_scheduler.LambdaLR`` stepped once per iteration.

Each schedule is a pure function ``factor(step) -> multiplier of the base LR`` (easy to test on its own),
wrapped in ``LambdaLR`` so that its state is saved and restored with the checkpoint.

Recipes (the replication's three, plus one for a single fast GPU):

``paper-sgd``  SGD, momentum 0.9, weight decay 5e-4; LR warms up linearly from 0 to 0.2·B/256 over the first 5%
               of the epochs, then cosine decay to 0 (Bello et al.'s CIFAR setting, scaled by batch size B).
``seed-adam``  Adam, LR 1e-3, no weight decay; ×0.1 at epoch 80, ×0.01 at 120, ×0.001 at 160, ×0.0005 at 180 of
               220 (the replication's ResNet schedule); for other lengths the milestones scale proportionally.
``wrn-sgd``    SGD, Nesterov momentum 0.9, LR 0.1, weight decay 5e-4, ×0.2 at 30%, 60% and 80% of the epochs
               (Zagoruyko & Komodakis).
``fast``       SGD, Nesterov momentum 0.9, weight decay 5e-4 (not on BN/bias), label smoothing 0.1, peak LR
               0.1·B/128 after a linear warm-up over the first 2 epochs' worth of steps, then cosine to 0: a short
               large-batch schedule for one modern GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

Schedule = Callable[[int], float]


@dataclass(frozen=True)
class Recipe:
    """Defaults of one recipe; ``lr`` may be a function of the global batch size."""

    optimizer: str  # "sgd" | "adam"
    lr: Callable[[int], float]
    weight_decay: float
    nesterov: bool = False
    label_smoothing: float = 0.0
    no_decay_on_norm_and_bias: bool = False


RECIPES: dict[str, Recipe] = {
    "paper-sgd": Recipe("sgd", lambda b: 0.2 * b / 256, 5e-4),
    "seed-adam": Recipe("adam", lambda b: 1e-3, 0.0),
    "wrn-sgd": Recipe("sgd", lambda b: 0.1, 5e-4, nesterov=True),
    "fast": Recipe("sgd", lambda b: 0.1 * b / 128, 5e-4, nesterov=True, label_smoothing=0.1,
                   no_decay_on_norm_and_bias=True),
}


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


def schedule_for(recipe: str, *, epochs: int, steps_per_epoch: int) -> Schedule:
    """The per-step LR multiplier of a recipe for a run of ``epochs`` × ``steps_per_epoch`` steps."""
    total = epochs * steps_per_epoch

    def at_epoch(fraction: float) -> int:
        return round(fraction * epochs) * steps_per_epoch

    if recipe == "paper-sgd":
        return partial(warmup_cosine, total=total, warmup=round(0.05 * epochs * steps_per_epoch))
    if recipe == "seed-adam":
        marks = [at_epoch(e / 220) for e in (80, 120, 160, 180)]
        return partial(piecewise, milestones=marks, factors=[0.1, 0.01, 0.001, 0.0005])
    if recipe == "wrn-sgd":
        marks = [at_epoch(f) for f in (0.3, 0.6, 0.8)]
        return partial(piecewise, milestones=marks, factors=[0.2, 0.04, 0.008])
    if recipe == "fast":
        return partial(warmup_cosine, total=total, warmup=min(2 * steps_per_epoch, total // 4))
    raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")


# ------------------------------------------------------------------------------------------- builders
def _param_groups(model: nn.Module, weight_decay: float, no_decay_on_norm_and_bias: bool) -> list[dict]:
    if not no_decay_on_norm_and_bias:
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
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, dict]:
    """Optimiser, per-step scheduler and the resolved hyper-parameters (for the run's config)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    spec = RECIPES[recipe]
    base_lr = spec.lr(batch_size) if lr is None else lr
    wd = spec.weight_decay if weight_decay is None else weight_decay
    groups = _param_groups(model, wd, spec.no_decay_on_norm_and_bias)
    optimizer: torch.optim.Optimizer
    if spec.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=0.9, nesterov=spec.nesterov)
    else:
        optimizer = torch.optim.Adam(groups, lr=base_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule_for(recipe, epochs=epochs, steps_per_epoch=steps_per_epoch)
    )
    resolved = {
        "recipe": recipe,
        "optimizer": spec.optimizer + ("-nesterov" if spec.nesterov else ""),
        "base_lr": base_lr,
        "weight_decay": wd,
        "label_smoothing": spec.label_smoothing,
        "global_batch_size": batch_size,
    }
    return optimizer, scheduler, resolved

