"""Optional TensorBoard logs of a run (``--tensorboard``): scalars in ``RUN/tensorboard/``, written by rank 0.

Per step: ``step/loss`` (this rank's training loss of the batch) and ``step/lr`` (the learning rate the step used),
at global step ``epoch * steps_per_epoch + step``. The losses stay on the device until the end of the epoch, so
logging adds no host-device sync per step. Per epoch (at step = the epoch number): ``epoch/<key>`` for every
value of the epoch's metrics row that was measured (losses, accuracies, learning rate, images/s, peak memory).

It needs the ``tensorboard`` package (``pip install -e ".[tensorboard]"``); :func:`require_tensorboard` refuses
the option in one line before anything trains when it is missing. Watch a run with ``tensorboard --logdir runs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aacn.errors import UserError

__all__ = ["EPOCH_KEYS", "TensorBoardLog", "require_tensorboard"]

EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "images_per_s", "peak_mem_bytes")


def _writer_class() -> Any:
    from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

    return SummaryWriter


def require_tensorboard() -> None:
    """Raise a one-line :class:`UserError` when ``--tensorboard`` cannot write (no ``tensorboard`` package)."""
    try:
        _writer_class()
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package, which is not installed: pip install -e "
                        "\".[tensorboard]\" (or pip install tensorboard), or leave out --tensorboard",
                        all_ranks=True) from None


class TensorBoardLog:
    """The TensorBoard writer of one run (see the module docstring)."""

    def __init__(self, log_dir: str | Path, steps_per_epoch: int):
        self._writer = _writer_class()(log_dir=str(log_dir))
        self._steps_per_epoch = steps_per_epoch
        self._pending: list[tuple[int, torch.Tensor, Any]] = []

    def step(self, epoch: int, step: int, loss: torch.Tensor, lr: Any) -> None:
        """Step ``step`` (1-based) of epoch ``epoch`` (0-based) trained with learning rate ``lr`` to ``loss``."""
        self._pending.append((epoch * self._steps_per_epoch + step, loss.detach(), lr))

    def _write_steps(self) -> None:
        if not self._pending:
            return
        losses = torch.stack([loss.double() for _, loss, _ in self._pending]).tolist()  # one sync
        for (global_step, _, lr), loss in zip(self._pending, losses, strict=True):
            self._writer.add_scalar("step/loss", loss, global_step)
            self._writer.add_scalar("step/lr", float(lr), global_step)
        self._pending.clear()

    def epoch(self, row: dict[str, Any]) -> None:
        """The steps logged so far and the finished epoch's metrics ``row``; then flush to disk."""
        self._write_steps()
        for key in EPOCH_KEYS:
            if row.get(key) is not None:
                self._writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
        self._writer.flush()

    def close(self) -> None:
        self._write_steps()
        self._writer.close()
