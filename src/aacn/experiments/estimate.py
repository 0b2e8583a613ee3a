"""How long each run of a reproduction will take on this machine, measured before anything trains.

:func:`estimate_seconds` builds a run's model as ``aacn train`` would (its config's architecture, attention,
channels-last setting, device and batch size), times a few real training steps (forward, backward, SGD update)
and a few evaluation batches on random CIFAR-size images, and scales them to the run: ``epochs`` times the
steps of an epoch plus the per-epoch validation, then the final evaluation of the train, validation and test
splits. Models with the same architecture and batch are timed once (:class:`Estimator` caches them).

Such an estimate is as good as the machine is quiet. On the CPU, where other load (another training, a test
suite) leaves a timed step less than two thirds of its threads' time, the step's process CPU time per thread
stands in for its wall time: nearer what the step costs on idle cores than what the load made of it, though
still high (a thread spinning while it waits for a descheduled one is counted). :attr:`Estimator.busy` says
when that happened, and the dry run says it with the load average.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from aacn.config import RunConfig
from aacn.data.registry import DATASETS
from aacn.models.registry import create_model
from aacn.train.distributed import resolve_device

__all__ = ["Estimator", "RunPlan", "estimate_seconds", "plan_line", "format_duration", "load_average"]


def format_duration(seconds: float | None) -> str:
    """``"—"``, ``"45 s"``, ``"12 min"`` or ``"1.6 h"``."""
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def load_average() -> str:
    """The 1-minute load average and the core count, e.g. ``"load 2.1 on 2 cores"`` (``""`` where unknown)."""
    try:
        return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return ""


BUSY_FACTOR = 1.5  # wall time over this many times the CPU time per thread: the machine was busy


@dataclass
class Estimator:
    """Times each distinct (architecture, batch, device) once; ``steps`` timed training steps after one warm-up."""

    steps: int = 2
    cache: dict[str, tuple[float, float]] = field(default_factory=dict)
    busy: bool = False  # some timing stood in CPU time per thread for wall time (the machine was busy)

    def per_step_and_image(self, config: RunConfig) -> tuple[float, float]:
        """Seconds of one training step of ``config.batch_size`` images, and of evaluating one image."""
        device = resolve_device(config.device)
        channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
        key = json.dumps([repr(config.arch), config.batch_size, str(device), channels_last])
        if key not in self.cache:
            self.cache[key] = self._measure(config, device, channels_last)
        return self.cache[key]

    def _measure(self, config: RunConfig, device: torch.device, channels_last: bool) -> tuple[float, float]:
        model = create_model(config.arch).to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        shape = (config.arch.in_channels, config.arch.input_size, config.arch.input_size)  # the dataset's images
        images = torch.randn(config.batch_size, *shape, device=device).to(memory_format=fmt)
        labels = torch.randint(0, config.arch.num_classes, (config.batch_size,), device=device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

        step_time = self._best_time(step, device)
        model.eval()
        with torch.no_grad():
            eval_time = self._best_time(lambda: model(images), device)
        return step_time, eval_time / config.batch_size

    def _best_time(self, fn: Any, device: torch.device) -> float:
        """Best of ``steps`` calls after a warm-up: wall seconds, or on a busy CPU the CPU seconds per thread."""
        fn()  # warm-up
        best = float("inf")
        for _ in range(max(1, self.steps)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - start
            if device.type == "cpu":
                per_thread = (time.process_time() - cpu_start) / torch.get_num_threads()
                if wall > BUSY_FACTOR * per_thread:  # descheduled for over a third of the time: use CPU time
                    wall = per_thread
                    self.busy = True
            best = min(best, wall)
        return best


@dataclass(frozen=True)
class RunPlan:
    """One run of a reproduction: where it stands and how long it takes (estimated, or as recorded)."""

    label: str
    config: RunConfig
    status: str  # "finished", "started" or "new"
    seconds: float | None  # estimated training time still to spend (0 if finished, None: no estimate)
    recorded_s: float | None = None  # a finished run's recorded training time


def estimate_seconds(estimator: Estimator, config: RunConfig, *, from_epoch: int = 0) -> float | None:
    """Estimated seconds to train ``config`` from ``from_epoch`` to its end, evaluations included; None where the
    dataset's registry entry does not say how many images it has."""
    counts = DATASETS[config.dataset].images
    if counts is None:
        return None
    step_s, image_s = estimator.per_step_and_image(config)
    total, test = counts
    val = config.val_size
    train = min(config.subset, total - val) if config.subset else total - val
    steps = train // config.batch_size
    per_epoch = steps * step_s + val * image_s
    final = (train + val + test) * image_s * (2 if config.tta else 1)
    return (config.epochs - from_epoch) * per_epoch + final


def plan_line(i: int, plan: RunPlan) -> str:
    """One line of a dry run: number, label, seed, folder, and its state or estimate."""
    where = f"{plan.label}, seed {plan.config.seed} -> {plan.config.out}"
    if plan.status == "finished":
        took = f" (took {format_duration(plan.recorded_s)})" if plan.recorded_s is not None else ""
        return f"{i:3d}. {where}: finished{took}"
    state = "resumes, " if plan.status == "started" else ""
    return f"{i:3d}. {where}: {state}est. {format_duration(plan.seconds)}"
