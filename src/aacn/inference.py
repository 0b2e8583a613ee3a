"""Use a trained run: its model (:func:`load_model`, also ``aacn.load_model``) and its test accuracy
(:func:`evaluate_run`, also ``aacn evaluate RUN_DIR``).

Both build the model from the run's own ``config.json`` (through :func:`aacn.train.build.build_model`, as the
run itself did) and load its newest checkpoint, which for a finished run holds the final model that
``results.json`` evaluated. Checkpoints are loaded with ``weights_only=True``: a run folder never executes code.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from aacn.config import RunConfig
from aacn.data.cifar import NUM_CLASSES
from aacn.errors import UserError
from aacn.train.records import RunDir

__all__ = ["load_model", "evaluate_run"]


def _run_config(run: RunDir) -> RunConfig:
    if not run.config_path.is_file():
        raise UserError(f"{run.path} is not a run directory (no config.json); pass a folder written by 'aacn train'")
    stored = run.read_config()
    if isinstance(stored, dict) and stored.get("kind") == "anchor":
        raise UserError(f"{run.path} is an anchor record (a public baseline trained by its own code): it holds no "
                        "aacn model; pass a folder written by 'aacn train'")
    return RunConfig.load(run.config_path)


def load_model(run_dir: str | os.PathLike, *, num_classes: int | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of the run in ``run_dir``, on ``device``, in eval mode.

    ``num_classes``: the number of outputs the caller expects; refused (naming both) if the run's differ.
    Raises :class:`UserError` for a folder that is no run or a run without a readable checkpoint.
    """
    from aacn.train.build import build_model

    run = RunDir(run_dir)
    config = _run_config(run)
    trained = NUM_CLASSES[config.dataset]
    if num_classes is not None and num_classes != trained:
        raise UserError(f"num_classes={num_classes} does not match the run {run.path}, which was trained on "
                        f"{config.dataset} with {trained} classes; pass num_classes={trained} (or leave it out)")
    found = run.latest_checkpoint(map_location="cpu")
    if found is None:
        raise UserError(f"{run.path} has no readable checkpoint in {run.checkpoint_dir}; train it first "
                        f"('aacn train --out {run.path} ...', or --resume to finish it)")
    model = build_model(config, trained)
    model.load_state_dict(found[1]["model"])
    return model.to(device).eval()


def evaluate_run(run_dir: str | os.PathLike, *, dataset: str | None = None, tta: bool = False,
                 data_dir: str | os.PathLike | None = None, device: str = "auto") -> dict[str, Any]:
    """Test loss, top-1 and top-5 accuracy (percent) of the run's trained model, computed as the run did.

    The test images are normalised with the statistics of the run's own training split (same dataset,
    ``val_size``, ``split_seed`` and ``subset``) and evaluated at its ``eval_batch_size`` and precision.
    ``dataset``: another dataset with the run's number of classes (default: the run's); ``tta``: also the
    flip-TTA numbers, as ``test_acc_tta``, ``test_top5_tta`` and ``test_loss_tta``; ``data_dir``: where the
    data is (default: the run's ``data_dir``).
    """
    from aacn.data.augment import Normalizer
    from aacn.data.cifar import load_cifar
    from aacn.train import distributed
    from aacn.train.build import evaluation_loader
    from aacn.train.evaluate import evaluate

    run = RunDir(run_dir)
    config = _run_config(run)
    dataset = dataset or config.dataset
    if dataset not in NUM_CLASSES:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(NUM_CLASSES)}")
    ctx = distributed.Context(device=distributed.resolve_device(device))
    model = load_model(run.path, num_classes=NUM_CLASSES[dataset], device=ctx.device)
    data = load_cifar(dataset, data_dir if data_dir is not None else config.data_dir, val_size=config.val_size,
                      split_seed=config.split_seed, subset=config.subset, progress=False)
    normalizer = Normalizer(config.normalize, data.train.images).to(ctx.device)
    test = evaluation_loader(data.test, config, ctx, normalizer)
    amp = None if ctx.device.type == "cpu" and config.amp == "fp16" else distributed.autocast_dtype(config.amp,
                                                                                                    ctx.device)
    plain = evaluate(model, test, ctx, amp)
    result = {"run": str(run.path), "dataset": dataset, "test_acc": plain["acc"], "test_top5": plain["top5"],
              "test_loss": plain["loss"]}
    if tta:
        flipped = evaluate(model, test, ctx, amp, tta=True)
        result.update({"test_acc_tta": flipped["acc"], "test_top5_tta": flipped["top5"],
                       "test_loss_tta": flipped["loss"]})
    return result
