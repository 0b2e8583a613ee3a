"""Use a trained run: its model (:func:`load_model`) and its test accuracy
(:func:`evaluate_run`, also ``aacn evaluate RUN_DIR``).

Both build the model from the run's own ``config.json`` (through :func:`aacn.train.build.build_model`, as the
run itself did), once the record is known consistent, and load the final checkpoint of a finished run (the model
that ``results.json`` evaluated), never an older one; an unfinished run is refused unless ``partial``. A damaged
checkpoint or one that does not fit the config is one :class:`UserError` naming the file. Checkpoints are loaded
with ``weights_only=True``: a run folder never executes code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aacn.config import RunConfig
from aacn.data.registry import dataset as dataset_entry
from aacn.errors import UserError
from aacn.train.rundir import RunDir, recorded_config

__all__ = ["Trained", "load_trained", "load_model", "evaluate_run"]


def _run_config(run: RunDir) -> RunConfig:
    """The run's config, once its record is known complete and consistent (:mod:`aacn.train.rundir`)."""
    if not run.config_path.is_file() and not run.results_path.is_file():
        raise UserError(f"{run.path} is not a run directory (no config.json); pass a folder written by 'aacn train'")
    config = recorded_config(run)
    assert config is not None
    return config


@dataclass
class Trained:
    """A run's trained model and where its weights come from: ``checkpoint`` after ``epoch`` epochs and ``step``
    batches; ``finished``: the final model of a finished run (else partial weights, asked for with ``partial``)."""

    model: nn.Module
    config: RunConfig
    checkpoint: Path
    finished: bool
    epoch: int
    step: int

    def describe(self) -> str:
        """Which weights these are, in words (for a command's output)."""
        if self.finished:
            return f"final model, {self.checkpoint}"
        step = f", step {self.step}" if self.step else ""
        return (f"PARTIAL weights of an unfinished run: after epoch {self.epoch} of {self.config.epochs}{step}, "
                f"{self.checkpoint}")


def _checkpoint(run: RunDir, config: RunConfig, partial: bool) -> tuple[Path, dict[str, Any], bool]:
    """The final checkpoint of a finished run; the newest of an unfinished one only when ``partial``."""
    if run.is_finished():
        path = run.final_checkpoint_path(config.epochs)
        state = run.load_checkpoint(path)
        if state.get("epoch") != config.epochs or state.get("step", 0) != 0:
            raise UserError(f"{path} is not the final checkpoint of {run.path} (it holds epoch {state.get('epoch')!r}, "
                            f"step {state.get('step')!r}); retrain, or restore the file")
        return path, state, True
    if not partial:
        raise UserError(f"{run.path} has not finished (no results.json): its checkpoints hold partial weights; "
                        f"finish it ('aacn train --resume --out {run.path} ...') or pass --partial to use them")
    found = run.checkpoints()
    if not found:
        raise UserError(f"{run.path} has no checkpoint in {run.checkpoint_dir}; train it first "
                        f"('aacn train --out {run.path} ...', or --resume to finish it)")
    return found[-1], run.load_checkpoint(found[-1]), False


def load_trained(run_dir: str | os.PathLike, *, num_classes: int | None = None, device: str | torch.device = "cpu",
                 partial: bool = False) -> Trained:
    """The trained model of the run in ``run_dir`` (on ``device``, in eval mode) and where its weights come from.

    A finished run gives the model of its final checkpoint (``checkpoints/epoch-<epochs>.pt``), the one
    ``results.json`` evaluated; never an older one. An unfinished run (still training, or interrupted) is
    refused unless ``partial``, which takes its newest checkpoint. ``num_classes``: the number of outputs the
    caller expects; refused (naming both) if the run's differ.

    Raises :class:`UserError` (one line naming the file) for a folder that is no run, an inconsistent record, a
    missing or damaged checkpoint, or a checkpoint whose config or weights do not fit ``config.json``.
    """
    from aacn.train.build import build_model

    run = RunDir(run_dir)
    config = _run_config(run)
    trained = dataset_entry(config.dataset).num_classes
    if num_classes is not None and num_classes != trained:
        raise UserError(f"num_classes={num_classes} does not match the run {run.path}, which was trained on "
                        f"{config.dataset} with {trained} classes; pass num_classes={trained} (or leave it out)")
    path, state, finished = _checkpoint(run, config, partial)
    try:
        made_with = RunConfig.from_dict(state.get("config"))
        diffs = made_with.differences(config)
    except (UserError, TypeError, ValueError, AttributeError) as exc:
        diffs = [f"its config is unreadable ({' '.join(str(exc).split())[:120]})"]
    if diffs:
        raise UserError(f"{path} was made with another config than {run.config_path} ({'; '.join(diffs)}); the "
                        "files come from different runs: restore them, or retrain")
    model = build_model(config)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:
        reason = " ".join(str(exc).split())
        raise UserError(f"{path} does not hold the weights of the model in {run.config_path} ({reason[:200]}"
                        f"{'...' if len(reason) > 200 else ''}); restore the file, or retrain") from None
    return Trained(model.to(device).eval(), config, path, finished, int(state.get("epoch", 0)),
                   int(state.get("step", 0)))


def load_model(run_dir: str | os.PathLike, *, num_classes: int | None = None,
               device: str | torch.device = "cpu", partial: bool = False) -> nn.Module:
    """The trained model of the run in ``run_dir``, on ``device``, in eval mode (see :func:`load_trained`).

    The final model of a finished run; an unfinished run is refused unless ``partial``.
    """
    return load_trained(run_dir, num_classes=num_classes, device=device, partial=partial).model


def evaluate_run(run_dir: str | os.PathLike, *, dataset: str | None = None, tta: bool = False,
                 data_dir: str | os.PathLike | None = None, device: str = "auto",
                 partial: bool = False) -> dict[str, Any]:
    """Test loss, top-1 and top-5 accuracy (percent) of the run's trained model, computed as the run did.

    The test images are normalised with the statistics of the run's own training split (same dataset,
    ``val_size``, ``split_seed`` and ``subset``) and evaluated at its ``eval_batch_size`` and precision.
    ``dataset``: another registered dataset with the run's number of classes and image shape (default: the
    run's); ``tta``: also the flip-TTA numbers, as ``test_acc_tta``, ``test_top5_tta`` and ``test_loss_tta``;
    ``data_dir``: where the data is (default: the run's ``data_dir``).
    """
    from aacn.data.augment import Normalizer
    from aacn.data.registry import load_data
    from aacn.train import distributed
    from aacn.train.build import evaluation_loader
    from aacn.train.evaluate import evaluate

    device_now = distributed.resolve_device(device)  # a bad --device is refused before anything is read
    run = RunDir(run_dir)
    config = _run_config(run)
    dataset = dataset or config.dataset
    entry, trained = dataset_entry(dataset), dataset_entry(config.dataset)  # unknown: one line naming the known
    if entry.image_shape != trained.image_shape:
        raise UserError(f"{dataset} has images of shape {entry.image_shape}, but the run {run.path} was trained on "
                        f"{config.dataset} images of shape {trained.image_shape}; choose a dataset of the same "
                        "image shape")
    ctx = distributed.Context(device=device_now)
    weights = load_trained(run.path, num_classes=entry.num_classes, device=ctx.device, partial=partial)
    model = weights.model
    data = load_data(config, dataset_name=dataset, data_dir=data_dir, progress=False)
    normalizer = Normalizer(config.normalize, data.train.images).to(ctx.device)
    test = evaluation_loader(data.test, config, ctx, normalizer)
    amp = None if ctx.device.type == "cpu" and config.amp == "fp16" else distributed.autocast_dtype(config.amp,
                                                                                                    ctx.device)
    plain = evaluate(model, test, ctx, amp)
    result = {"run": str(run.path), "dataset": dataset, "test_acc": plain["acc"], "test_top5": plain["top5"],
              "test_loss": plain["loss"], "checkpoint": str(weights.checkpoint), "finished": weights.finished,
              "weights": weights.describe()}
    if tta:
        flipped = evaluate(model, test, ctx, amp, tta=True)
        result.update({"test_acc_tta": flipped["acc"], "test_top5_tta": flipped["top5"],
                       "test_loss_tta": flipped["loss"]})
    return result
