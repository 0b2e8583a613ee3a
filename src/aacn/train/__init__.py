"""aacn.train: the training loop (:func:`run`), its step (:func:`train_one_epoch`), recipes, run records and
distributed helpers."""

from aacn.train.loop import run
from aacn.train.step import train_one_epoch, train_step

__all__ = ["run", "train_one_epoch", "train_step"]
