"""What a checkpoint holds and how a run continues from one.

A checkpoint is the whole training state: model, optimiser, scheduler, grad-scaler and RNG state, the position
(finished epochs, and steps into the next epoch for a checkpoint taken on Ctrl-C or SIGTERM), the run time so
far, the partial training sums of a mid-epoch checkpoint, the run's config and resolved recipe and its data's
fingerprints. Every
value is a tensor or a plain Python value, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from aacn.config import RunConfig
from aacn.train import distributed
from aacn.train.step import Learner


@dataclass
class Position:
    """Where training (re)starts: ``epoch`` finished epochs, ``step`` batches into the next one.

    ``partial``: this rank's ``(loss * n, correct, n)`` over those ``step`` batches (a mid-epoch checkpoint
    holds all ranks' sums together; rank 0 takes them); ``resumed_images``: how many images they were (not
    timed again); ``elapsed``: run time so far, in seconds.
    """

    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    resumed_images: float = 0.0


def training_state(learner: Learner, config: RunConfig, *, epoch: int, step: int, sums: list[float] | None,
                   elapsed: float, data: dict[str, Any] | None = None,
                   recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint of ``learner`` after ``epoch`` epochs and ``step`` batches of the next; ``data``: the
    provenance of the images it trains on (label and fingerprints), ``recipe``: the resolved recipe it trains
    with (:func:`aacn.train.recipes.resolved_recipe`), both compared when the run resumes."""
    state = {
        "model": learner.raw_model.state_dict(), "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(), "scaler": learner.scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(), "epoch": epoch, "step": step, "elapsed": elapsed,
        "partial": list(sums) if sums is not None else [0.0, 0.0, 0.0], "config": config.to_dict(),
    }
    if data is not None:
        state["data"] = data
    if recipe is not None:
        state["recipe"] = recipe
    if learner.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(learner.device)
    return state


def restore(learner: Learner, state: dict[str, Any], ctx: distributed.Context) -> Position:
    """Load ``state`` into ``learner`` (and the RNGs); return the position it was taken at."""
    learner.raw_model.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"].cpu())
    if learner.device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"].cpu(), learner.device)
    saved = [float(v) for v in state["partial"]]
    return Position(epoch=int(state["epoch"]), step=int(state["step"]), elapsed=float(state["elapsed"]),
                    partial=saved if ctx.is_main else [0.0, 0.0, 0.0], resumed_images=saved[2])
