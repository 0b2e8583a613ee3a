"""The parts of a run, built from its :class:`~aacn.config.RunConfig`: data, model, loaders and learner.

Every function reads run options as ``config.<name>`` only; :func:`build_model` is the one place where the
config becomes an architecture, so a run (and :func:`aacn.inference.load_model`) always builds the model the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aacn.config import RunConfig
from aacn.data.augment import Normalizer
from aacn.data.loader import DeviceLoader
from aacn.data.registry import dataset, load_data
from aacn.data.splits import Split, Splits
from aacn.errors import UserError
from aacn.models.registry import create_model
from aacn.nn.triton_attention import triton_unavailable_reason
from aacn.train import distributed
from aacn.train.recipes import RECIPES, build_optimizer
from aacn.train.step import Learner
from aacn.train.sync_bn import convert_sync_batchnorm
from aacn.train.tensorboard import require_tensorboard


def build_model(config: RunConfig) -> nn.Module:
    """The untrained model ``config`` describes (on the CPU), sized for its dataset: the classifier's outputs and the
    input's size and channels come from the dataset's registry entry (:class:`aacn.config.RunConfig` sets them)."""
    return create_model(config.arch)


def check_settings(config: RunConfig, ctx: distributed.Context) -> torch.dtype | None:
    """Refuse settings this device or world cannot run (one line each); return the autocast dtype."""
    if config.batch_size % ctx.world_size:
        raise UserError(
            f"--batch-size {config.batch_size} is the global batch and must be divisible by the world size "
            f"{ctx.world_size}; pick a multiple of {ctx.world_size}", all_ranks=True
        )
    if config.recipe not in RECIPES:
        raise UserError(f"unknown --recipe {config.recipe!r}; choose one of {', '.join(RECIPES)}", all_ranks=True)
    if config.tensorboard:
        require_tensorboard()
    amp_dtype = distributed.autocast_dtype(config.amp, ctx.device)
    if config.attention_impl == "triton" and config.attention not in (None, "none"):
        reason = triton_unavailable_reason(ctx.device, amp_dtype or torch.float32)
        if reason:
            raise UserError(f"--attention-impl triton {reason}; use --attention-impl auto", all_ranks=True)
    return amp_dtype


def load_run_data(config: RunConfig, ctx: distributed.Context) -> Splits:
    """The run's splits (:func:`aacn.data.registry.load_data`); rank 0 loads (and downloads) first, the others
    then find the files in place."""
    data = load_data(config) if ctx.is_main else None
    distributed.barrier(ctx)
    if data is None:
        data = load_data(config, progress=False)
    if config.batch_size > len(data.train):
        raise UserError(f"--batch-size {config.batch_size} is larger than the {len(data.train)} training images; "
                        "lower it or raise --subset")
    return data


def uses_channels_last(config: RunConfig, device: torch.device) -> bool:
    return config.channels_last if config.channels_last is not None else device.type == "cuda"


def place_model(model: nn.Module, config: RunConfig, ctx: distributed.Context) -> nn.Module:
    """``model`` on the run's device and memory format (SyncBatchNorm'd under ``--sync-bn``)."""
    model.to(ctx.device)
    if uses_channels_last(config, ctx.device):
        model.to(memory_format=torch.channels_last)
    if ctx.distributed and config.sync_bn:
        model = convert_sync_batchnorm(model, ctx.device)  # PyTorch's SyncBatchNorm is CUDA-only
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    return model


@dataclass
class Loaders:
    """The run's batches: ``train`` (shuffled, augmented, full batches only) and in-order ``val`` / ``test``."""

    train: DeviceLoader
    val: DeviceLoader
    test: DeviceLoader
    normalizer: Normalizer
    config: RunConfig
    ctx: distributed.Context

    def evaluation(self, split: Split) -> DeviceLoader:
        """An in-order loader over any split (e.g. the training images, for the final evaluation)."""
        return evaluation_loader(split, self.config, self.ctx, self.normalizer)


def evaluation_loader(split: Split, config: RunConfig, ctx: distributed.Context,
                      normalizer: Normalizer) -> DeviceLoader:
    """In-order batches of ``split`` at the run's ``eval_batch_size`` and memory format."""
    return DeviceLoader(split, config.eval_batch_size, device=ctx.device, normalizer=normalizer, train=False,
                        rank=ctx.rank, world_size=ctx.world_size,
                        channels_last=uses_channels_last(config, ctx.device))


def build_loaders(data: Splits, config: RunConfig, ctx: distributed.Context) -> Loaders:
    normalizer = Normalizer(config.normalize, data.train.images).to(ctx.device)
    train = DeviceLoader(data.train, config.batch_size, device=ctx.device, normalizer=normalizer, train=True,
                         augment=config.augment, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size,
                         channels_last=uses_channels_last(config, ctx.device), pad=dataset(data.name).pad)
    return Loaders(train, evaluation_loader(data.val, config, ctx, normalizer),
                   evaluation_loader(data.test, config, ctx, normalizer), normalizer, config, ctx)


def build_learner(model: nn.Module, config: RunConfig, ctx: distributed.Context, *, steps_per_epoch: int,
                  amp_dtype: torch.dtype | None) -> tuple[Learner, dict[str, Any]]:
    """Optimiser, scheduler, loss and the (DDP-wrapped, compiled) step model; plus the resolved
    hyper-parameters for ``config.json``."""
    optimizer, scheduler, hyper = build_optimizer(
        config.recipe, model, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
        batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing)
    smoothing = hyper["label_smoothing"]
    step_model = model
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        step_model = DistributedDataParallel(model, device_ids=ids)
    if config.compile:
        step_model = compile_model(step_model, config.compile_mode)
    learner = Learner(
        model=step_model, raw_model=model, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16),
        criterion=nn.CrossEntropyLoss(label_smoothing=smoothing), device=ctx.device, amp_dtype=amp_dtype,
        cuda_graphs=config.compile and config.compile_mode == "reduce-overhead" and ctx.device.type == "cuda")
    return learner, hyper


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """``torch.compile(model)`` in ``mode``; ``reduce-overhead`` captures CUDA graphs, which need every call
    to have the same shapes (the training loader yields full batches only)."""
    if mode == "default":
        return torch.compile(model)
    return torch.compile(model, mode=mode)
