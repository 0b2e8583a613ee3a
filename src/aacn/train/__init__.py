"""aacn.train: one training run.

:mod:`~aacn.train.loop` (``run``, the run top to bottom), :mod:`~aacn.train.build` (model, loaders, learner from
a config), :mod:`~aacn.train.step` (``train_step``, ``train_one_epoch``), :mod:`~aacn.train.recipes` (optimiser
and schedule), :mod:`~aacn.train.rundir` (the run directory: records, checkpoints, resume and reuse rules),
:mod:`~aacn.train.lock` (one writer per folder), :mod:`~aacn.train.evaluate`, :mod:`~aacn.train.progress`,
:mod:`~aacn.train.tensorboard` and the distributed helpers (:mod:`~aacn.train.distributed`,
:mod:`~aacn.train.sync_bn`). Import from those modules; this file re-exports nothing.
"""
