"""aacn.train: the training loop (:func:`run`), recipes, run records and distributed helpers."""

from aacn.train.loop import run

__all__ = ["run"]
