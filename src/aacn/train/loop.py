"""One training run, top to bottom: run folder, data, model, learner, restore, epochs, results.

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

import contextlib
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from aacn.config import RunConfig
from aacn.data.splits import Splits
from aacn.errors import Terminated, UserError
from aacn.files import check_output_dir
from aacn.provenance import environment
from aacn.train import distributed
from aacn.train.build import (
    Loaders,
    build_learner,
    build_loaders,
    build_model,
    check_settings,
    load_run_data,
    place_model,
    uses_channels_last,
)
from aacn.train.evaluate import count_parameters, evaluate, flops_per_image
from aacn.train.lock import run_lock
from aacn.train.progress import (
    EpochProgress,
    depth_overrides,
    describe_attention,
    describe_data,
    format_epoch,
    percent,
)
from aacn.train.recipes import resolved_recipe
from aacn.train.rundir import (
    Position,
    Start,
    check_same_config,
    check_same_data,
    epoch_row,
    prepare_run_dir,
    restore,
    summarize,
    training_state,
)
from aacn.train.step import AgreedStop, EpochState, Learner, NonFiniteLoss, train_one_epoch
from aacn.train.tensorboard import TensorBoardLog

MEMORY_ADVICE = "lower --batch-size or --base-width, or try --attention-impl chunked or --amp bf16"


def run(config: RunConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``config`` into ``config.out`` and return its results (also written to ``results.json``).

    ``resume``: continue an unfinished run from its newest valid checkpoint (a finished one with the same
    config is returned as is); implied when torchrun restarts the worker group (``TORCHELASTIC_RESTART_COUNT``
    > 0). ``overwrite``: discard whatever ``config.out`` holds. Without either, a non-empty run directory is
    refused. Raises :class:`UserError` for problems the user can fix, running out of memory included.
    """
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        resume = True  # torchrun --max-restarts restarted the worker group: go on from the last checkpoint
    ctx = distributed.init(config.device)
    try:
        with _one_writer(config, ctx):
            return _run(config, ctx, resume=resume, overwrite=overwrite)
    except BaseException as exc:
        if ctx.distributed:  # free the DDP model (held by the traceback's frames) before its process group:
            traceback.clear_frames(exc.__traceback__)  # freed after it, gloo sometimes hung at exit
        if is_out_of_memory(exc):
            raise UserError(f"out of memory on {ctx.device} ({_first_line(exc)[:200]}); {MEMORY_ADVICE}") from None
        raise
    finally:
        distributed.shutdown(ctx)


@contextlib.contextmanager
def _one_writer(config: RunConfig, ctx: distributed.Context) -> Iterator[None]:
    """Hold the lock of ``config.out`` (rank 0 takes it) for the whole run; every rank learns if it failed."""
    check_output_dir(config.out, "--out")
    held = contextlib.ExitStack()
    error: UserError | None = None
    if ctx.is_main:
        try:
            held.enter_context(run_lock(config.out))
        except UserError as exc:
            error = exc
    if ctx.distributed:
        failed = distributed.all_reduce_sum(torch.tensor([float(error is not None)], device=ctx.device), ctx)
        if failed.item() and error is None:
            raise UserError(f"{config.out} is in use by another process", all_ranks=True)
    if error is not None:
        raise UserError(str(error), all_ranks=True)
    with held:
        yield


def _run(config: RunConfig, ctx: distributed.Context, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    start = prepare_run_dir(config, resume=resume, overwrite=overwrite)
    if start.action == "done":
        _log(ctx, f"{start.run_dir.path} has already finished with this config; its results are in "
                  f"{start.run_dir.results_path}")
        return start.results
    amp_dtype = check_settings(config, ctx)
    data = load_run_data(config, ctx)
    if start.action == "resume":
        check_same_data(start.run_dir, start.recorded_data, data.provenance, "its config.json records")
    session = _build(config, ctx, data, start, amp_dtype)
    position = _restore(session, start)
    _write_start_records(session)
    _announce(session)
    if config.tensorboard and ctx.is_main:  # after _restore, which clears a fresh run's folder
        session.tensorboard = TensorBoardLog(session.run_dir.tensorboard_dir, len(session.loaders.train))
    try:
        _train_epochs(session, position)
        return _finish(session)
    finally:
        if session.tensorboard is not None:
            session.tensorboard.close()


@dataclass
class _Session:
    """The parts of one run, built once, that its steps share."""

    config: RunConfig
    ctx: distributed.Context
    data: Splits
    start: Start
    learner: Learner
    loaders: Loaders
    info: dict[str, Any]
    recipe: dict[str, Any]  # the resolved recipe, recorded in config.json, results.json and checkpoints
    provenance: dict[str, Any] | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    run_start: float = 0.0
    tensorboard: TensorBoardLog | None = None  # with --tensorboard, on rank 0

    @property
    def run_dir(self):
        return self.start.run_dir


def _log(ctx: distributed.Context, *args: Any, **kwargs: Any) -> None:
    if ctx.is_main:
        print(*args, **kwargs)


def _build(config: RunConfig, ctx: distributed.Context, data: Splits, start: Start,
           amp_dtype: torch.dtype | None) -> _Session:
    """Model (seeded by ``config.seed``), loaders and learner, and the facts ``config.json`` records."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    facts = {"params": count_parameters(model), "attention_layers": list(getattr(model, "attention_layers", []))}
    model = place_model(model, config, ctx)
    loaders = build_loaders(data, config, ctx)
    learner, hyper = build_learner(model, config, ctx, steps_per_epoch=len(loaders.train), amp_dtype=amp_dtype)
    precision = str(amp_dtype).replace("torch.", "") if amp_dtype else "none"
    channels_last = uses_channels_last(config, ctx.device)
    info = {**facts, **hyper, "world_size": ctx.world_size, "device": str(ctx.device), "amp": precision,
            "channels_last": channels_last, "steps_per_epoch": len(loaders.train), "train_images": len(data.train)}
    provenance = environment(ctx.device, precision=f"{precision} autocast" if amp_dtype else "float32",
                             compile=config.compile,
                             compile_mode=config.compile_mode if config.compile else None,
                             channels_last=channels_last, world_size=ctx.world_size) if ctx.is_main else None
    return _Session(config, ctx, data, start, learner, loaders, info, resolved_recipe(config), provenance)


def _restore(s: _Session, start: Start) -> Position:
    """Clear the folder of a fresh run, or load the newest checkpoint of a resumed one."""
    if start.action == "fresh":
        if s.ctx.is_main:
            s.run_dir.clear()
        return Position()
    found = s.run_dir.latest_checkpoint(map_location=s.ctx.device)
    if found is None:
        _log(s.ctx, f"no usable checkpoint in {s.run_dir.checkpoint_dir}; starting from the beginning")
        return Position()
    path, state = found
    check_same_config(s.run_dir, s.config, what="its checkpoint was made with", saved=state["config"],
                      recipe=state.get("recipe"))
    check_same_data(s.run_dir, state.get("data"), s.data.provenance, f"{path.name} was trained on")
    position = restore(s.learner, state, s.ctx)
    s.rows = [r for r in s.run_dir.read_metrics() if r["epoch"] <= position.epoch]
    _log(s.ctx, f"resuming {s.run_dir.path} from {path.name} (epoch {position.epoch}, step {position.step})")
    return position


def _write_start_records(s: _Session) -> None:
    if s.ctx.is_main:
        s.run_dir.write_config(s.config.to_dict(), s.info, recipe=s.recipe, provenance=s.provenance,
                               data=s.data.provenance)
        s.run_dir.write_metrics(s.rows)
    distributed.barrier(s.ctx)


def _announce(s: _Session) -> None:
    c, d, info = s.config, s.data, s.info
    _log(s.ctx, f"{c.model} on {c.dataset} ({len(d.train)} train / {len(d.val)} val / {len(d.test)} test): "
                f"{info['params']:,} parameters, {describe_attention(info['attention_layers'])}")
    _log(s.ctx, f"data: {describe_data(d.provenance)}")
    overrides = depth_overrides(info["attention_layers"], c.kappa, c.upsilon)
    if overrides:
        _log(s.ctx, overrides)
    _log(s.ctx, f"recipe {c.recipe}: {info['optimizer']}, global batch {c.batch_size} ({s.ctx.world_size} x "
                f"{c.batch_size // s.ctx.world_size}), base lr {info['base_lr']:g}, weight decay "
                f"{info['weight_decay']:g}; device {s.ctx.device}, amp {c.amp}, {c.epochs} epochs")


def _save(s: _Session, epoch: int, step: int, sums: list[float] | None) -> None:
    if s.ctx.is_main:
        state = training_state(s.learner, s.config, epoch=epoch, step=step, sums=sums,
                               elapsed=time.perf_counter() - s.run_start, data=s.data.provenance,
                               recipe=s.recipe)
        s.run_dir.save_checkpoint(state, epoch, step, keep=s.config.checkpoint_keep)


def _train_epochs(s: _Session, position: Position) -> None:
    """Epochs ``position.epoch + 1, …``: train, validate, record, checkpoint. Ctrl-C/SIGTERM stop between steps."""
    s.run_start = time.perf_counter() - position.elapsed
    s.learner.model.train()
    with _StopRequest() as stop:
        for epoch in range(position.epoch, s.config.epochs):
            _one_epoch(s, epoch, position, stop)
            position = Position(epoch=epoch + 1)


def _one_epoch(s: _Session, epoch: int, position: Position, stop: _StopRequest) -> None:
    ctx, device = s.ctx, s.ctx.device
    distributed.reset_peak_memory(device)
    state = EpochState(epoch, position.step, torch.tensor(position.partial, dtype=torch.float64, device=device))
    bar = EpochProgress(epoch + 1, s.config.epochs, len(s.loaders.train), initial=position.step,
                        enabled=s.config.progress and ctx.is_main)
    t0 = time.perf_counter()
    try:
        try:
            train_one_epoch(s.learner, s.loaders.train, state, ctx, stop=stop, progress=bar,
                            on_step=s.tensorboard.step if s.tensorboard is not None else None)
        finally:
            bar.close()
    except KeyboardInterrupt as exc:
        if isinstance(exc, _Abort):
            _log(ctx, f"\naborted at epoch {state.epoch + 1}, step {state.step}, without saving; --resume continues "
                      f"from the last checkpoint in {s.run_dir.checkpoint_dir}", file=sys.stderr)
            raise
        _interrupted(s, state, agreed=isinstance(exc, AgreedStop))
        if stop.signum == signal.SIGTERM:
            raise Terminated from None
        raise
    except NonFiniteLoss as bad:
        raise _non_finite_error(s, bad) from None
    except _compile_error_types() as exc:  # compilation happens in the first steps (forward, then backward)
        raise _compile_error(exc) from None
    seconds = time.perf_counter() - t0
    sums = distributed.all_reduce_sum(state.sums, ctx).tolist()
    if not math.isfinite(sums[0]):
        raise UserError(f"loss became non-finite in epoch {epoch + 1}; training stopped, the last good checkpoint "
                        f"is kept in {s.run_dir.checkpoint_dir}. Lower --lr or use --amp none")
    distributed.broadcast_buffers(s.learner.raw_model, ctx)
    val = evaluate(s.learner.raw_model, s.loaders.val, ctx, s.learner.amp_dtype)
    row = epoch_row(epoch + 1, sums, val, lr=s.learner.scheduler.get_last_lr()[0], seconds=seconds,
                    timed_images=sums[2] - position.resumed_images,
                    peak_mem_bytes=distributed.peak_memory_bytes(device), num_classes=s.data.num_classes)
    s.rows.append(row)
    if ctx.is_main:  # metrics first: a resume drops rows newer than its checkpoint, never misses one
        s.run_dir.write_metrics(s.rows)
    if s.tensorboard is not None:
        s.tensorboard.epoch(row)
    _save(s, epoch + 1, 0, None)
    _log(ctx, format_epoch(row, s.config.epochs))


def _interrupted(s: _Session, state: EpochState, *, agreed: bool) -> None:
    """Save a mid-epoch checkpoint (with the whole batch's sums when all ranks stopped together) and say so."""
    if agreed:
        distributed.all_reduce_sum(state.sums, s.ctx)
    _save(s, state.epoch, state.step, state.sums.tolist())
    _log(s.ctx, f"\ninterrupted at epoch {state.epoch + 1}, step {state.step}: checkpoint saved in "
                f"{s.run_dir.checkpoint_dir}; continue with the same command plus --resume", file=sys.stderr)


def _non_finite_error(s: _Session, bad: NonFiniteLoss) -> UserError:
    last = s.run_dir.checkpoints()
    keep = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
    return UserError(f"loss became {bad.value} at epoch {bad.epoch + 1}, step {bad.step}; training stopped and "
                     f"{keep}. Lower --lr, use --amp none, or check the data, then rerun (with --resume to go on)")


def _compile_error(exc: BaseException) -> UserError:
    cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
    return UserError(f"torch.compile failed ({type(cause).__name__}: {_first_line(cause)[:200]}); rerun the same "
                     "command without --compile, with --resume (or report the bug to PyTorch; TORCHDYNAMO_VERBOSE=1 "
                     "shows it)")


def _finish(s: _Session) -> dict[str, Any]:
    """Evaluate every split (and the test set with flip TTA if asked), write ``results.json``, return it."""
    model, ctx, amp = s.learner.raw_model, s.ctx, s.learner.amp_dtype
    distributed.broadcast_buffers(model, ctx)
    evaluations = {"train": evaluate(model, s.loaders.evaluation(s.data.train), ctx, amp),
                   "val": evaluate(model, s.loaders.val, ctx, amp),
                   "test": evaluate(model, s.loaders.test, ctx, amp)}
    if s.config.tta:
        evaluations["test_tta"] = evaluate(model, s.loaders.test, ctx, amp, tta=True)
    facts = {"model": s.config.model, "dataset": s.config.dataset, "epochs": s.config.epochs,
             "params": s.info["params"], "flops_per_image": flops_per_image(model, s.data.image_shape),
             "world_size": ctx.world_size, "device": str(ctx.device), "attention_layers": s.info["attention_layers"],
             "config": s.config.to_dict(), "recipe": s.recipe, "provenance": s.provenance,
             "data": s.data.provenance}
    results = summarize(s.rows, evaluations, wall_time_s=time.perf_counter() - s.run_start, model_facts=facts)
    if ctx.is_main:
        s.run_dir.write_results(results)
        _log(ctx, _done_line(results, s))
    return results


def _done_line(results: dict[str, Any], s: _Session) -> str:
    top5 = f", top-5 {percent(results['test_top5'])}" if s.data.num_classes > 10 else ""
    tta = f"  test (flip TTA) {percent(results['test_acc_tta'])}" if "test_acc_tta" in results else ""
    return (f"done in {results['wall_time_s']:.0f} s: train {percent(results['train_acc'])}  val "
            f"{percent(results['val_acc'])}  test {percent(results['test_acc'])}{top5}{tta}  -> "
            f"{s.run_dir.results_path}")


# ------------------------------------------------------------------------------------------------ helpers
class _Abort(KeyboardInterrupt):
    """A third Ctrl-C: stop at once, without writing a checkpoint (the last one stays the newest)."""


class _StopRequest:
    """Ctrl-C / SIGTERM handler that asks the loop to stop at the next step boundary.

    Stopping only between steps keeps model, optimiser and scheduler consistent in the saved checkpoint, so a
    resumed run is bit-identical to an uninterrupted one. A second Ctrl-C only says so (it still waits for the
    step to end); a third aborts at once without writing a checkpoint. ``signum``: the first signal received.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._presses = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = self.signum or signum
        if self.requested and signum == signal.SIGINT:
            self._presses += 1
            if self._presses >= 2:
                raise _Abort
            print("\nstopping at the end of this step to save a consistent checkpoint; press Ctrl-C once more to "
                  "abort without saving", file=sys.stderr, flush=True)
            return
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


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed: CUDA/MPS out of memory, or the CPU allocator gave up."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


__all__ = ["run", "is_out_of_memory"]
