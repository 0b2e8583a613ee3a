"""One training step and one training epoch: what ``aacn train`` and ``benchmarks/train_step.py`` both run.

:func:`train_step` is forward under autocast, cross-entropy, ``zero_grad``, (scaled) backward, optimiser and
per-step LR-scheduler step. :func:`train_one_epoch` runs the steps of one epoch from a given position, keeps
the running sums on the device (no host sync per step) and, every :data:`NAN_CHECK_EVERY` steps, makes the
one sync at which every rank learns of a non-finite loss or of a stop request (Ctrl-C, SIGTERM), so that all
ranks stop at the same step.

CUDA graphs (``torch.compile(mode="reduce-overhead")``) replay a captured step, which needs static shapes:
every training batch has the same shape because the training loader yields full global batches only (the last
partial batch of an epoch is dropped), and :func:`train_step` marks each step's start for the graph trees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aacn.train import distributed
from aacn.train.evaluate import autocast

NAN_CHECK_EVERY = 20  # steps between loss checks (each check is a host-device sync)


@dataclass
class Learner:
    """Everything one training step touches.

    ``model`` is what the step calls (the plain model, or its DDP / ``torch.compile`` wrapper); ``raw_model`` is
    the plain model, whose state is saved and which evaluation runs. ``cuda_graphs``: the model was compiled with
    ``mode="reduce-overhead"``, so each step is marked as a new CUDA-graph iteration.
    """

    model: nn.Module
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None = None
    cuda_graphs: bool = False


def train_step(learner: Learner, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """One optimisation step on a batch; returns ``(loss, logits)`` (still on the device, not synced)."""
    if learner.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with autocast(learner.device, learner.amp_dtype):
        logits = learner.model(images)
        loss = learner.criterion(logits.float(), labels)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.step(learner.optimizer)
    learner.scaler.update()
    learner.scheduler.step()
    return loss, logits


@dataclass
class EpochState:
    """Where an epoch stands: ``step`` global batches of ``epoch`` are done; ``sums`` holds this rank's
    ``(loss * n, correct, n)`` over them (float64, on the device)."""

    epoch: int
    step: int
    sums: Tensor


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite; the epoch stopped at ``step``."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"non-finite loss {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


class AgreedStop(KeyboardInterrupt):
    """Every rank stops at the same step (a stop was requested on one of them): their sums can be added."""


def train_one_epoch(learner: Learner, loader, state: EpochState, ctx: distributed.Context, *,
                    stop=None, progress=None, on_step=None) -> EpochState:
    """Train the batches ``state.step, …`` of epoch ``state.epoch`` of ``loader``, updating ``state`` in place.

    ``stop``: an object whose ``requested`` flag ends the epoch after the current step (raises
    :class:`KeyboardInterrupt`; :class:`AgreedStop` when distributed). ``progress``: an
    :class:`~aacn.train.progress.EpochProgress`, updated at the sync points only. Raises
    :class:`NonFiniteLoss` at the first check that sees a non-finite loss. ``on_step(epoch, step, loss, lr)``:
    called after each step with its (1-based) number, its loss (on the device, not synced) and the learning rate it
    used.
    """
    steps = len(loader)
    for images, labels in loader.batches(state.epoch, start=state.step):
        lr = learner.optimizer.param_groups[0]["lr"]
        loss, logits = train_step(learner, images, labels)
        state.step += 1
        if on_step is not None:
            on_step(state.epoch, state.step, loss, lr)
        with torch.no_grad():  # running sums stay on the device: no sync per step
            state.sums[0] += loss.detach().double() * labels.numel()
            state.sums[1] += (logits.argmax(1) == labels).sum()
            state.sums[2] += labels.numel()
        requested = bool(stop is not None and stop.requested)
        if requested and not ctx.distributed:
            raise KeyboardInterrupt
        if state.step % NAN_CHECK_EVERY == 0 or state.step == steps:
            _check(loss, requested, state, ctx)
            if progress is not None:
                progress.update(state.step, state.sums, ctx.world_size)
    return state


def _check(loss: Tensor, requested: bool, state: EpochState, ctx: distributed.Context) -> None:
    """One sync: every rank learns of a bad loss or a stop request at the same step."""
    status = torch.stack([loss.detach().double(), torch.tensor(float(requested), device=loss.device).double()])
    total_loss, stops = distributed.all_reduce_sum(status, ctx).tolist()
    if not math.isfinite(total_loss):
        raise NonFiniteLoss(state.epoch, state.step, total_loss)
    if stops:
        raise AgreedStop
