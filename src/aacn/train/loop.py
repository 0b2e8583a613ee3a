"""One training run, top to bottom: data on the device, model, recipe, epochs, checkpoints, results.

:func:`run` is what ``aacn train`` calls, and what the experiment presets call for each row. It works alone
or as one rank of a ``torchrun`` job (DistributedDataParallel; every rank augments its own part of each global
batch on its own device; only rank 0 writes files).

Determinism and resumption: the model is initialised from ``seed``; epoch ``e``'s order and augmentation are
a pure function of ``(seed, e)`` (see :class:`aacn.data.loader.DeviceLoader`); checkpoints hold model,
optimiser, scheduler, grad-scaler and RNG state plus the position in the epoch. So a run that is interrupted
(Ctrl-C, SIGTERM, SIGKILL) and resumed with ``resume=True`` continues from its newest valid checkpoint and,
on CPU, ends with the same metrics as a run that was never interrupted.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aacn import __version__
from aacn.config import RunConfig
from aacn.data.augment import Normalizer
from aacn.data.cifar import load_cifar
from aacn.data.loader import DeviceLoader
from aacn.errors import UserError
from aacn.models import create_model
from aacn.nn.triton_attention import triton_unavailable_reason
from aacn.train import distributed
from aacn.train.evaluate import autocast, count_parameters, evaluate, flops_per_image
from aacn.train.progress import EpochProgress, describe_attention, format_epoch
from aacn.train.recipes import RECIPES, build_optimizer
from aacn.train.records import RunDir
from aacn.train.sync_bn import convert_sync_batchnorm

NAN_CHECK_EVERY = 20  # steps between loss checks (each check is a host-device sync)


class _StopRequest:
    """Ctrl-C / SIGTERM handler that asks the loop to stop at the next step boundary.

    Stopping only between steps keeps model, optimiser and scheduler consistent in the saved checkpoint. A
    second Ctrl-C falls back to Python's default and interrupts at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _check_run_dir(run_dir: RunDir, resume: bool, overwrite: bool) -> str:
    """What to do with ``run_dir``: 'fresh', 'resume' or 'done' (finished and resume asked)."""
    if overwrite:
        return "fresh"
    if run_dir.is_finished():
        if resume:
            return "done"
        raise UserError(
            f"{run_dir.path} already holds a finished run; pass --resume to keep it, --overwrite to train "
            "again, or choose another --out"
        )
    if run_dir.has_started() and not resume:
        raise UserError(
            f"{run_dir.path} holds an unfinished run; pass --resume to continue it or --overwrite to start over"
        )
    return "resume" if resume else "fresh"


def _model_info(model: nn.Module) -> dict[str, Any]:
    return {
        "params": count_parameters(model),
        "attention_layers": list(getattr(model, "attention_layers", [])),
    }


def _compile_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions by which ``torch.compile`` reports that it failed (Dynamo, or Inductor in the backward)."""
    import torch._dynamo.exc

    types: list[type[BaseException]] = [torch._dynamo.exc.TorchDynamoException]
    try:
        from torch._inductor.exc import InductorError

        types.append(InductorError)
    except ImportError:  # older PyTorch: Inductor's errors reach us wrapped by Dynamo
        pass
    return tuple(types)


def run(config: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``config`` into ``config.out`` and return its results (also written to ``results.json``).

    ``resume``: continue an unfinished run from its newest valid checkpoint (a finished one is returned as
    is); implied when torchrun restarts the worker group (``TORCHELASTIC_RESTART_COUNT`` > 0).
    ``overwrite``: discard whatever ``config.out`` holds. Without either, a non-empty run directory is refused.
    Raises :class:`UserError` for problems the user can fix.
    """
    try:
        config.validate()
    except UserError as exc:
        exc.all_ranks = True
        raise
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = True  # torchrun --max-restarts restarted the worker group: go on from the last checkpoint
    ctx = distributed.init(config.device)
    try:
        return _run(config, ctx, resume=resume, overwrite=overwrite)
    except BaseException as exc:
        if ctx.distributed:  # free the DDP model (held by the traceback's frames) before its process group:
            traceback.clear_frames(exc.__traceback__)  # freed after it, gloo sometimes hung at exit
        raise
    finally:
        distributed.shutdown(ctx)


def _run(config: RunConfig, ctx: distributed.Context, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    run_dir = RunDir(config.out)
    action = _check_run_dir(run_dir, resume, overwrite)
    if action == "done":
        return run_dir.read_results()
    log = print if ctx.is_main else (lambda *a, **k: None)
    if config.batch_size % ctx.world_size:
        raise UserError(
            f"--batch-size {config.batch_size} is the global batch and must be divisible by the world size "
            f"{ctx.world_size}; pick a multiple of {ctx.world_size}", all_ranks=True
        )

    device = ctx.device
    amp_dtype = distributed.autocast_dtype(config.amp, device)
    kwargs = config.model_kwargs
    if kwargs.get("attention_impl") == "triton" and kwargs.get("attention") not in (None, "none"):
        reason = triton_unavailable_reason(device, amp_dtype or torch.float32)
        if reason:
            raise UserError(f"--attention-impl triton {reason}; use --attention-impl auto", all_ranks=True)

    # ------------------------------------------------------------------------------------------ data
    if ctx.is_main:
        data = load_cifar(config.dataset, config.data_dir, val_size=config.val_size,
                          split_seed=config.split_seed, subset=config.subset, progress=config.progress)
    distributed.barrier(ctx)  # rank 0 downloads first; the others then find the files in place
    if not ctx.is_main:
        data = load_cifar(config.dataset, config.data_dir, val_size=config.val_size,
                          split_seed=config.split_seed, subset=config.subset, progress=False)
    if config.batch_size > len(data.train):
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the {len(data.train)} training images; "
            "lower it or raise --subset"
        )

    # ----------------------------------------------------------------------------------------- model
    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=data.num_classes, **config.model_kwargs)
    info = _model_info(model)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.distributed and config.sync_bn:
        model = convert_sync_batchnorm(model, device)  # PyTorch's SyncBatchNorm is CUDA-only
    raw_model = model
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")

    normalizer = Normalizer(config.normalize, data.train.images).to(device)
    train_loader = DeviceLoader(data.train, config.batch_size, device=device, normalizer=normalizer, train=True,
                                augment=config.augment, seed=config.seed, rank=ctx.rank,
                                world_size=ctx.world_size, channels_last=channels_last)

    def eval_loader(split):
        return DeviceLoader(split, config.eval_batch_size, device=device, normalizer=normalizer, train=False,
                            rank=ctx.rank, world_size=ctx.world_size, channels_last=channels_last)

    val_loader, test_loader = eval_loader(data.val), eval_loader(data.test)
    steps_per_epoch = len(train_loader)
    optimizer, scheduler, hyper = build_optimizer(
        config.recipe, raw_model, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
        batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay)
    label_smoothing = (config.label_smoothing if config.label_smoothing is not None
                       else RECIPES[config.recipe].label_smoothing)
    hyper["label_smoothing"] = label_smoothing
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    if ctx.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    compile_errors: tuple[type[BaseException], ...] = ()
    if config.compile:
        model = torch.compile(model)
        compile_errors = _compile_error_types()

    # ---------------------------------------------------------------------------------------- resume
    start_epoch, start_step, elapsed, partial = 0, 0, 0.0, [0.0, 0.0, 0.0]
    resumed_images = 0.0  # images of the current epoch already trained before a mid-epoch checkpoint
    rows: list[dict[str, Any]] = []
    if action == "fresh":
        if ctx.is_main:
            run_dir.clear()
    else:
        found = run_dir.latest_checkpoint(map_location=device)
        if found is None:
            log(f"no usable checkpoint in {run_dir.path / 'checkpoints'}; starting from the beginning")
        else:
            path, state = found
            saved = RunConfig.from_dict(state["config"])
            diffs = saved.differences(config)
            if diffs:
                raise UserError(
                    f"cannot resume {run_dir.path}: its checkpoint was made with a different config "
                    f"({'; '.join(diffs)}); rerun with the same settings, or use --overwrite / another --out"
                )
            raw_model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng_cpu"].cpu())
            if device.type == "cuda" and "rng_cuda" in state:
                torch.cuda.set_rng_state(state["rng_cuda"].cpu(), device)
            start_epoch, start_step = int(state["epoch"]), int(state["step"])
            # a mid-epoch checkpoint holds the partial sums of all ranks together: give them to rank 0 only
            elapsed, saved_partial = float(state["elapsed"]), [float(v) for v in state["partial"]]
            partial = saved_partial if ctx.is_main else [0.0, 0.0, 0.0]
            resumed_images = saved_partial[2]
            rows = [r for r in run_dir.read_metrics() if r["epoch"] <= start_epoch]
            log(f"resuming {run_dir.path} from {path.name} (epoch {start_epoch}, step {start_step})")
    if ctx.is_main:
        run_dir.write_config(config.to_dict(), {
            **info, **hyper, "world_size": ctx.world_size, "device": str(device),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "none",
            "channels_last": channels_last, "steps_per_epoch": steps_per_epoch,
            "train_images": len(data.train), "aacn_version": __version__, "torch_version": torch.__version__})
        run_dir.write_metrics(rows)
    distributed.barrier(ctx)

    log(f"{config.model} on {config.dataset} ({len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test): {info['params']:,} parameters, {describe_attention(info['attention_layers'])}")
    log(f"recipe {config.recipe}: {hyper['optimizer']}, global batch {config.batch_size} "
        f"({ctx.world_size} x {config.batch_size // ctx.world_size}), base lr {hyper['base_lr']:g}, "
        f"weight decay {hyper['weight_decay']:g}; device {device}, amp {config.amp}, {config.epochs} epochs")

    def save(epoch: int, step: int, sums: torch.Tensor | None, run_time: float) -> None:
        if not ctx.is_main:
            return
        state = {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(), "epoch": epoch, "step": step, "elapsed": run_time,
            "partial": sums.tolist() if sums is not None else [0.0, 0.0, 0.0], "config": config.to_dict(),
        }
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(device)
        run_dir.save_checkpoint(state, epoch, step, keep=config.checkpoint_keep)

    # ---------------------------------------------------------------------------------------- epochs
    run_start = time.perf_counter() - elapsed
    model.train()
    with _StopRequest() as stop:
        for epoch in range(start_epoch, config.epochs):
            distributed.reset_peak_memory(device)
            sums = torch.tensor(partial, dtype=torch.float64, device=device)  # loss*n, correct, n (this rank)
            step = start_step
            bar = EpochProgress(epoch + 1, config.epochs, steps_per_epoch, initial=step,
                                enabled=config.progress and ctx.is_main)
            t0 = time.perf_counter()
            agreed_stop = False  # every rank stops at this same step (so they can add up their sums)
            try:
                for images, labels in train_loader.batches(epoch, start=start_step):
                    with autocast(device, amp_dtype):
                        logits = model(images)
                        loss = criterion(logits.float(), labels)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    with torch.no_grad():  # running sums stay on the device: no sync per step
                        sums[0] += loss.detach().double() * labels.numel()
                        sums[1] += (logits.argmax(1) == labels).sum()
                        sums[2] += labels.numel()
                    if stop.requested and not ctx.distributed:
                        raise KeyboardInterrupt
                    if step % NAN_CHECK_EVERY == 0 or step == steps_per_epoch:
                        # one sync: every rank learns of a bad loss or a stop request at the same step
                        status = torch.stack([loss.detach().double(),
                                              torch.tensor(float(stop.requested), device=device).double()])
                        bad_loss, stops = distributed.all_reduce_sum(status, ctx).tolist()
                        if not math.isfinite(bad_loss):
                            raise _NonFinite(epoch, step, bad_loss)
                        if stops:
                            agreed_stop = True
                            raise KeyboardInterrupt
                        bar.update(step, sums, time.perf_counter() - t0, ctx.world_size)
            except KeyboardInterrupt:
                bar.close()
                if agreed_stop:
                    distributed.all_reduce_sum(sums, ctx)  # the checkpoint keeps the whole batch's sums
                save(epoch, step, sums, time.perf_counter() - run_start)
                log(f"\ninterrupted at epoch {epoch + 1}, step {step}: checkpoint saved in "
                    f"{run_dir.checkpoint_dir}; continue with the same command plus --resume", file=sys.stderr)
                raise
            except _NonFinite as bad:
                bar.close()
                last = run_dir.checkpoints()
                keep = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
                raise UserError(
                    f"loss became {bad.value} at epoch {bad.epoch + 1}, step {bad.step}; training stopped and "
                    f"{keep}. Lower --lr, use --amp none, or check the data, then rerun (with --resume to go on)"
                ) from None
            except compile_errors as exc:  # compilation happens in the first steps (forward, then backward)
                bar.close()
                cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
                detail = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
                raise UserError(
                    f"torch.compile failed ({type(cause).__name__}: {detail[:200]}); rerun the same command "
                    "without --compile, with --resume (or report the bug to PyTorch; TORCHDYNAMO_VERBOSE=1 shows it)"
                ) from None
            bar.close()
            epoch_time = time.perf_counter() - t0
            distributed.all_reduce_sum(sums, ctx)
            train_loss, correct, count = sums.tolist()
            if not math.isfinite(train_loss):
                raise UserError(f"loss became non-finite in epoch {epoch + 1}; training stopped, the last good "
                                f"checkpoint is kept in {run_dir.checkpoint_dir}. Lower --lr or use --amp none")
            distributed.broadcast_buffers(raw_model, ctx)
            val = evaluate(raw_model, val_loader, ctx, amp_dtype)
            row = {
                "epoch": epoch + 1, "train_loss": train_loss / count, "train_acc": 100.0 * correct / count,
                "val_loss": val["loss"], "val_acc": val["acc"], "lr": scheduler.get_last_lr()[0],
                "epoch_time_s": epoch_time, "images_per_s": (count - resumed_images) / epoch_time,
                "peak_mem_bytes": distributed.peak_memory_bytes(device),
            }
            if data.num_classes > 10:
                row["val_top5"] = val["top5"]
            rows.append(row)
            start_step, partial, resumed_images = 0, [0.0, 0.0, 0.0], 0.0
            if ctx.is_main:  # metrics first: a resume drops rows newer than its checkpoint, never misses one
                run_dir.write_metrics(rows)
            save(epoch + 1, 0, None, time.perf_counter() - run_start)
            log(format_epoch(row, config.epochs))

    # --------------------------------------------------------------------------------------- results
    distributed.broadcast_buffers(raw_model, ctx)
    train_eval = evaluate(raw_model, eval_loader(data.train), ctx, amp_dtype)
    val = evaluate(raw_model, val_loader, ctx, amp_dtype)
    test = evaluate(raw_model, test_loader, ctx, amp_dtype)
    wall = time.perf_counter() - run_start
    results = {
        "model": config.model, "dataset": config.dataset, "epochs": config.epochs,
        "train_acc": train_eval["acc"], "val_acc": val["acc"], "test_acc": test["acc"],
        "train_loss": train_eval["loss"], "val_loss": val["loss"], "test_loss": test["loss"],
        "test_top5": test["top5"], "val_top5": val["top5"],
        "wall_time_s": wall, "train_time_s": sum(r["epoch_time_s"] for r in rows),
        "params": info["params"], "flops_per_image": flops_per_image(raw_model),
        "peak_mem_bytes": max((r["peak_mem_bytes"] for r in rows), default=0),
        "images_per_s": (sum(r["images_per_s"] for r in rows) / len(rows)) if rows else 0.0,
        "world_size": ctx.world_size, "device": str(device),
        "attention_layers": info["attention_layers"], "config": config.to_dict(),
    }
    if ctx.is_main:
        run_dir.write_results(results)
        top5 = f", top-5 {test['top5']:.2f}%" if data.num_classes > 10 else ""
        log(f"done in {wall:.0f} s: train {train_eval['acc']:.2f}%  val {val['acc']:.2f}%  "
            f"test {test['acc']:.2f}%{top5}  -> {run_dir.results_path}")
    return results


class _NonFinite(Exception):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"non-finite loss {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value
