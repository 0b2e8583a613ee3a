"""Images/s of one training step per model: eager vs channels-last vs AMP vs torch.compile, and DDP scaling.

What is timed is the step ``aacn train`` runs, :func:`aacn.train.step.train_step` itself, on a batch from the
real :class:`~aacn.data.loader.DeviceLoader` (on-device flip/crop/normalise of uint8 images): forward under
autocast, cross-entropy, ``zero_grad``, (scaled) backward, optimiser and LR-scheduler step of a recipe
(:func:`~aacn.train.recipes.build_optimizer`), on a model from :func:`~aacn.models.create_model`. The data are
synthetic CIFAR-size images (speed does not depend on their content).

Single-process mode times every variant the device supports in one run and prints ratios to eager; on CPU the
variants are interleaved ``--repeats`` times, so load from other processes hits them alike (median reported).
``--distributed N`` instead runs each model under ``torchrun`` with 1 and with N processes (gloo on CPU, NCCL on
GPUs) at a fixed per-process batch, in the variant ``aacn train`` uses by default on that device, and reports
images/s and the scaling efficiency ``ips(N) / (N * ips(1))``. On CPU each process gets ``cpus // N`` threads in
both runs, so the comparison is per core.

    python benchmarks/train_step.py                            # CPU: narrow models, batch 32, ~1-2 min
    python benchmarks/train_step.py --distributed 2            # CPU: 1 vs 2 processes (gloo)
    python benchmarks/train_step.py --device cuda              # GPU: full width, batch 128, + compile
    python benchmarks/train_step.py --device cuda --distributed 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aacn.data import Split
from aacn.data.augment import Normalizer
from aacn.data.loader import DeviceLoader
from aacn.files import write_json
from aacn.models import create_model
from aacn.train import distributed
from aacn.train.recipes import build_optimizer
from aacn.train.step import Learner, train_step
from aacn.train.sync_bn import convert_sync_batchnorm

CPU_WIDTHS = {"resnet34": 8, "wrn-28-10": 2}  # narrow defaults on CPU (full: ResNet 64, WRN 16)


@dataclass(frozen=True)
class Variant:
    """How a step runs: memory format, autocast dtype (None: float32) and torch.compile (with ``compile_mode``
    and ``backend``; ``reduce-overhead`` on CUDA marks each step for CUDA graphs, as ``aacn train`` does)."""

    name: str
    channels_last: bool = False
    amp: str | None = None  # "bf16" | "fp16"
    compile: bool = False
    compile_mode: str = "default"  # "default" | "reduce-overhead" | "max-autotune"
    backend: str = "inductor"  # or e.g. "aot_eager" (no code generation: quick, for tests)


def amp_name(amp: str, device: torch.device) -> str | None:
    """``--amp`` → the autocast dtype of the AMP variants (``auto``: bf16 where supported, else fp16)."""
    if amp == "none":
        return None
    if amp == "auto":
        return "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
    return amp


def variants_for(device: torch.device, amp: str | None, channels_last: bool, compile_: bool) -> list[Variant]:
    """Eager first, then each optimisation alone and combined, where the device supports it."""
    out = [Variant("eager")]
    if channels_last:
        out.append(Variant("channels-last", channels_last=True))
    if amp:
        out.append(Variant(f"amp-{amp}", amp=amp))
        if channels_last:
            out.append(Variant(f"amp-{amp} + channels-last", channels_last=True, amp=amp))
    if compile_:
        out.append(Variant("compile", compile=True))
        if amp or channels_last:
            out.append(Variant("compile + all", channels_last=channels_last, amp=amp, compile=True))
    return out


def training_default(device: torch.device, compile_: bool) -> Variant:
    """The variant ``aacn train`` uses by default on ``device`` (AMP bf16 and channels-last on CUDA)."""
    if device.type == "cuda":
        return Variant("train default (cuda)", channels_last=True, amp=amp_name("auto", device), compile=compile_)
    return Variant(f"train default ({device.type})", compile=compile_)


def synthetic_split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


def save_result(result: dict[str, Any], out: str | Path, load_before: float) -> dict[str, Any]:
    """Add the machine (torch, CPUs, platform, load average after) to ``result``, write it as strict JSON to ``out``
    (atomically) and say so; returns ``result``."""
    result.update({"torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.platform(),
                   "load_average_before": load_before, "load_average_after": os.getloadavg()[0]})
    write_json(out, result)
    print(f"\nload average {load_before:.1f} before, {result['load_average_after']:.1f} after; wrote {out}")
    return result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepBench:
    """One model in one variant, set up like ``aacn.train.loop``; :meth:`time` runs and times steps."""

    def __init__(self, model_name: str, model_kwargs: dict[str, Any], variant: Variant, *, batch: int,
                 ctx: distributed.Context, recipe: str = "paper-sgd", sync_bn: bool = False) -> None:
        self.variant, self.ctx, self.device = variant, ctx, ctx.device
        self.global_batch = batch * ctx.world_size
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=10, **model_kwargs).to(self.device)
        if variant.channels_last:
            model.to(memory_format=torch.channels_last)
        if ctx.distributed and sync_bn:
            model = convert_sync_batchnorm(model, self.device)
        self.params = sum(p.numel() for p in model.parameters())
        split = synthetic_split(self.global_batch * 8)
        normalizer = Normalizer("standard", split.images)
        self.loader = DeviceLoader(split, self.global_batch, device=self.device, normalizer=normalizer,
                                   train=True, augment=True, rank=ctx.rank, world_size=ctx.world_size,
                                   channels_last=variant.channels_last)
        optimizer, scheduler, _ = build_optimizer(recipe, model, epochs=10_000, steps_per_epoch=len(self.loader),
                                                  batch_size=self.global_batch)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[variant.amp]
        step_model = model
        if ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            step_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        mode = {} if variant.compile_mode == "default" else {"mode": variant.compile_mode}
        self.model = torch.compile(step_model, backend=variant.backend, **mode) if variant.compile else step_model
        cuda_graphs = variant.compile and variant.compile_mode == "reduce-overhead" and self.device.type == "cuda"
        self.learner = Learner(model=self.model, raw_model=model, optimizer=optimizer, scheduler=scheduler,
                               scaler=torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16),
                               criterion=nn.CrossEntropyLoss(), device=self.device, amp_dtype=amp_dtype,
                               cuda_graphs=cuda_graphs)
        self.model.train()
        self._batches = self._cycle()
        self.samples: list[float] = []  # images/s (all ranks together) of each timed repeat
        self.warmup_s = 0.0

    def _cycle(self):
        epoch = 0
        while True:
            yield from self.loader.batches(epoch)
            epoch += 1

    def step(self) -> torch.Tensor:
        images, labels = next(self._batches)
        loss, _ = train_step(self.learner, images, labels)  # the very step aacn train runs
        return loss

    def time(self, steps: int) -> float:
        """Run ``steps`` steps; record and return images/s over all ranks (slowest rank's time)."""
        distributed.barrier(self.ctx)
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        loss.item()  # the last step has really finished
        sync(self.device)
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=self.device)
        if self.ctx.distributed:
            torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
        ips = self.global_batch * steps / float(elapsed)
        self.samples.append(ips)
        return ips


def model_kwargs_for(name: str, base_width: int | None, device: torch.device) -> dict[str, Any]:
    width = base_width if base_width is not None else (CPU_WIDTHS.get(name) if device.type == "cpu" else None)
    return {} if width is None else {"base_width": width}


# ---------------------------------------------------------------------------------------- single process
def compare_variants(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    ctx = distributed.Context(device=device)
    variants = variants_for(device, amp_name(args.amp, device), args.channels_last, args.compile)
    interleave = device.type != "cuda"  # on a shared CPU, interleave; on a GPU, one at a time (clean peaks)
    rows = []
    for name in args.models:
        kwargs = model_kwargs_for(name, args.base_width, device)
        benches: list[StepBench] = []
        for variant in variants:
            bench = _prepare(name, kwargs, variant, args, ctx)
            if interleave:
                benches.append(bench)
                continue
            for _ in range(args.repeats):
                bench.time(args.steps)
            rows.append(_row(name, kwargs, bench, args))
            del bench
            torch.cuda.empty_cache()
        for _ in range(args.repeats if interleave else 0):
            for bench in benches:
                bench.time(args.steps)
        rows += [_row(name, kwargs, b, args) for b in benches]
    for r in rows:
        eager = next(e for e in rows if e["model"] == r["model"] and e["variant"] == "eager")
        r["ratio_vs_eager"] = r["images_per_s"] / eager["images_per_s"]
    return rows


def _prepare(name: str, kwargs: dict, variant: Variant, args: argparse.Namespace,
             ctx: distributed.Context) -> StepBench:
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    bench = StepBench(name, kwargs, variant, batch=args.batch, ctx=ctx, recipe=args.recipe,
                      sync_bn=args.sync_bn)
    t0 = time.perf_counter()
    for _ in range(args.warmup + (2 if variant.compile else 0)):
        bench.step().item()
    bench.warmup_s = time.perf_counter() - t0
    if ctx.is_main:
        print(f"  {name} {variant.name}: ready ({bench.params:,} parameters, warm-up {bench.warmup_s:.1f} s)",
              flush=True)
    return bench


def _row(name: str, kwargs: dict, bench: StepBench, args: argparse.Namespace) -> dict[str, Any]:
    device = bench.device
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"model": name, **kwargs, "params": bench.params, "variant": bench.variant.name,
            **asdict(bench.variant), "batch": args.batch, "world_size": bench.ctx.world_size,
            "global_batch": bench.global_batch, "steps": args.steps, "repeats": len(bench.samples),
            "images_per_s": statistics.median(bench.samples), "images_per_s_each": bench.samples,
            "warmup_s": bench.warmup_s, "peak_mem_bytes": peak}


# ------------------------------------------------------------------------------------------- distributed
def worker(args: argparse.Namespace) -> None:
    """One rank under torchrun: time the training-default variant and let rank 0 write the result."""
    ctx = distributed.init(args.device)
    try:
        name = args.models[0]
        kwargs = model_kwargs_for(name, args.base_width, ctx.device)
        bench = _prepare(name, kwargs, training_default(ctx.device, args.compile), args, ctx)
        for _ in range(args.repeats):
            bench.time(args.steps)
        if ctx.is_main:
            row = _row(name, kwargs, bench, args)
            row["threads_per_process"] = torch.get_num_threads()
            row["backend"] = torch.distributed.get_backend() if ctx.distributed else "none"
            Path(args.worker).write_text(json.dumps(row))
    finally:
        distributed.shutdown(ctx)


def launch(args: argparse.Namespace, name: str, nproc: int, threads: int, out: Path) -> dict[str, Any]:
    """Run this script as ``torchrun --nproc-per-node nproc ... --worker out`` for one model."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           __file__, "--worker", str(out), "--models", name, "--batch", str(args.batch), "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--device", args.device,
           "--recipe", args.recipe]
    for flag, on in (("--compile", args.compile), ("--sync-bn", args.sync_bn)):
        if on:
            cmd.append(flag)
    if args.base_width is not None:
        cmd += ["--base-width", str(args.base_width)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"torchrun with {nproc} process(es) failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def scaling(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    n = args.distributed
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and n > gpus:
        raise SystemExit(f"--distributed {n} needs {n} GPUs, this machine has {gpus}")
    threads = max(1, (os.cpu_count() or 1) // n) if device.type == "cpu" else 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            single = launch(args, name, 1, threads, Path(tmp) / f"{name}-1.json")
            multi = launch(args, name, n, threads, Path(tmp) / f"{name}-{n}.json")
            efficiency = multi["images_per_s"] / (n * single["images_per_s"])
            rows.append({"model": name, "one": single, "many": multi, "nproc": n, "scaling_efficiency": efficiency})
    return rows


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet34", "wrn-28-10"])
    p.add_argument("--base-width", type=int, default=None,
                   help=f"model width (default: full on GPUs; on CPU {CPU_WIDTHS})")
    p.add_argument("--batch", type=int, default=None, help="per-process batch (default: 128 on GPUs, 32 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default: 50 GPU, 5 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 GPU, 2 CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default: 3 GPU, 3 CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"),
                   help="autocast dtype of the AMP variants (none: no AMP variants)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="include channels-last variants")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="include torch.compile variants (default: on GPUs only; slow to compile on CPU)")
    p.add_argument("--recipe", default="paper-sgd", help="optimiser + schedule of the step")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm in the distributed runs")
    p.add_argument("--distributed", type=int, default=0, metavar="N",
                   help="instead: 1 vs N processes under torchrun at the same per-process batch")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in single-process mode (default: 1 on CPU, as each process of "
                        "--distributed 2 on 2 cores; steadiest on a shared machine)")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/train_step[_distributed].json)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = distributed.resolve_device(args.device).type == "cuda"
    for key, on_gpu, on_cpu in (("batch", 128, 32), ("steps", 50, 5), ("warmup", 10, 2), ("repeats", 3, 3),
                                ("compile", True, False), ("threads", None, 1)):
        if getattr(args, key) is None:
            setattr(args, key, on_gpu if gpu else on_cpu)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = distributed.resolve_device(args.device)
    load_before = os.getloadavg()
    print(f"device {device}; torch {torch.__version__}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
          f"load average {load_before[0]:.1f}; batch {args.batch} per process, {args.steps} steps x "
          f"{args.repeats} repeats after {args.warmup} warm-up", flush=True)
    result: dict[str, Any] = {"benchmark": "train_step", "device": str(device),
                              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                              "args": {k: v for k, v in vars(args).items() if k != "worker"}}
    if args.distributed:
        rows = scaling(args, device)
        print(f"\nDDP scaling, {args.batch} images per process per step, variant "
              f"'{rows[0]['one']['variant']}', {rows[0]['one']['threads_per_process']} thread(s) per process\n")
        print("| model | width | 1 process img/s | N | N processes img/s | speed-up | efficiency |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            one, many = r["one"], r["many"]
            print(f"| {r['model']} | {one.get('base_width', 'full')} | {one['images_per_s']:.0f} | {r['nproc']} | "
                  f"{many['images_per_s']:.0f} | {many['images_per_s'] / one['images_per_s']:.2f}x | "
                  f"{100 * r['scaling_efficiency']:.0f}% |")
        result["distributed"] = rows
    else:
        rows = compare_variants(args, device)
        print(f"\nimages/s of a training step (median of {args.repeats}); ratio = images/s / eager's\n")
        print("| model | width | variant | images/s | ratio vs eager | peak MiB |")
        print("|---|---:|---|---:|---:|---:|")
        for r in rows:
            peak = f"{r['peak_mem_bytes'] / 2**20:.0f}" if r["peak_mem_bytes"] else "-"
            print(f"| {r['model']} | {r.get('base_width', 'full')} | {r['variant']} | {r['images_per_s']:.1f} | "
                  f"{r['ratio_vs_eager']:.2f}x | {peak} |")
        result["rows"] = rows
    name = "train_step_distributed" if args.distributed else "train_step"
    return save_result(result, args.out or f"benchmarks/results/{name}.json", load_before[0])


if __name__ == "__main__":
    main()
