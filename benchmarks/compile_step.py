"""Training-step time of the AA model under ``torch.compile`` against eager, and against the plain model compiled
the same way (issue 13's targets).

Cases: for each mode in ``--modes`` (``eager``: no compilation; ``default``, ``reduce-overhead``,
``max-autotune``: ``torch.compile(mode=...)``), the plain network and its paper-placement AA version once per
attention impl of ``--impls``. ``reduce-overhead`` captures CUDA graphs, so it runs on CUDA only (skipped with a
note on CPU). What is timed is :func:`aacn.train.step.train_step` itself, through ``StepBench`` of
``benchmarks/train_step.py`` (real ``DeviceLoader`` batches of synthetic CIFAR-size images, recipe
``paper-sgd``, autocast and channels-last as ``aacn train`` uses them on the device).

Each case first runs ``--warmup`` untimed steps (compilation happens there, and CUDA graphs are recorded), then
``--repeats`` rounds of ``--steps`` timed steps. On CPU all cases are set up first and the rounds interleave
them, so load from other processes on a shared machine hits every case alike; on CUDA each case runs alone and
is freed (with its compiled graphs) before the next, so memory does not add up and its peak is its own.
Reported: the median ms per step, the ratio AA / plain (same mode, same run) and the ratio to the same model's
eager step.

    python benchmarks/compile_step.py                  # CPU: narrow AA-WRN-28-10, batch 4, eager vs default
    python benchmarks/compile_step.py --device cuda    # WRN-28-10 full width, batch 512, bf16, all three modes

CPU target: a compiled step is not slower than eager. CUDA target: AA-WRN-28-10 (paper) <= 1.5x the plain
network's step, both compiled.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import StepBench, Variant, amp_name, save_result  # noqa: E402

from aacn.config import COMPILE_MODES  # noqa: E402
from aacn.experiments.presets import SMOKE_ATTENTION  # noqa: E402
from aacn.nn.functional import IMPLS  # noqa: E402
from aacn.nn.triton_attention import HAS_TRITON  # noqa: E402
from aacn.train import distributed  # noqa: E402

MODES = ("eager", *COMPILE_MODES)
CUDA_ONLY_MODES = ("reduce-overhead",)
# (cpu, cuda) defaults of the flags left out
DEFAULTS = {"base_width": (4, None), "batch": (4, 512), "steps": (2, 20), "warmup": (2, 5), "repeats": (3, 3),
            "threads": (1, None), "modes": (["eager", "default"], ["eager", "default", "reduce-overhead"])}


def cases(impls: list[str], modes: list[str], device: torch.device) -> tuple[list[tuple[str, str | None]], list[str]]:
    """``(mode, impl)`` pairs to run (impl None: the plain network) and a note per mode that is skipped."""
    out, notes = [], []
    for mode in modes:
        if mode in CUDA_ONLY_MODES and device.type != "cuda":
            notes.append(f"{mode}: skipped, it captures CUDA graphs (CUDA only)")
            continue
        out += [(mode, None)] + [(mode, impl) for impl in impls]
    return out, notes


def model_kwargs(args: argparse.Namespace, impl: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {} if args.base_width is None else {"base_width": args.base_width}
    if impl is not None:
        kwargs.update(attention="paper", attention_impl=impl)
        if args.base_width is not None:  # narrow layers: the smoke scale's heads and key depth
            kwargs.update(SMOKE_ATTENTION)
    return kwargs


def variant(mode: str, amp: str | None, channels_last: bool, backend: str) -> Variant:
    if mode == "eager":
        return Variant(mode, channels_last=channels_last, amp=amp)
    return Variant(mode, channels_last=channels_last, amp=amp, compile=True, compile_mode=mode, backend=backend)


def _free(device: torch.device) -> None:
    """Drop compiled graphs (and their CUDA-graph pools) of cases that are done, and cached CUDA memory."""
    if device.type == "cuda":
        torch.compiler.reset()
        torch.cuda.empty_cache()


def measure(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, Any]], list[str]]:
    ctx = distributed.Context(device=device)
    amp = amp_name(args.amp, device)
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    todo, notes = cases(args.impls, args.modes, device)
    interleave = device.type != "cuda"
    rows, benches = [], []
    for mode, impl in todo:
        name = f"{args.model} {'plain' if impl is None else 'paper ' + impl} {mode}"
        kwargs = model_kwargs(args, impl)
        row = {"model": args.model, "base_width": args.base_width, "attention": "none" if impl is None else "paper",
               "impl": impl, "mode": mode, "backend": None if mode == "eager" else args.backend,
               "model_kwargs": kwargs, "batch": args.batch, "amp": amp or "none", "channels_last": channels_last}
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            bench = StepBench(args.model, kwargs, variant(mode, amp, channels_last, args.backend), batch=args.batch,
                              ctx=ctx)
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                bench.step().item()
            row["warmup_s"] = time.perf_counter() - t0
        except Exception as exc:  # one case that cannot compile must not cost the others
            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            print(f"  {name}: failed ({row['error']})", flush=True)
            bench = None  # a bench whose warm-up failed is not kept
            _free(device)
            continue
        row["params"] = bench.params
        print(f"  {name}: ready ({bench.params:,} parameters, warm-up {row['warmup_s']:.1f} s)", flush=True)
        if interleave:
            benches.append((row, bench))
            continue
        for _ in range(args.repeats):
            row.setdefault("step_ms_each", []).append(1e3 * args.batch / bench.time(args.steps))
        row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        del bench
        _free(device)
    for _ in range(args.repeats if interleave else 0):
        for row, bench in benches:
            row.setdefault("step_ms_each", []).append(1e3 * args.batch / bench.time(args.steps))
    for row in rows:
        if "step_ms_each" in row:
            row["step_ms"] = statistics.median(row["step_ms_each"])
    for row in rows:
        plain = next((r for r in rows if r["mode"] == row["mode"] and r["impl"] is None and "step_ms" in r), None)
        eager = next((r for r in rows if r["mode"] == "eager" and r["impl"] == row["impl"] and "step_ms" in r), None)
        if "step_ms" in row and plain is not None:
            row["aa_over_plain"] = row["step_ms"] / plain["step_ms"]
        if "step_ms" in row and eager is not None:
            row["over_eager"] = row["step_ms"] / eager["step_ms"]
    return rows, notes


def print_table(rows: list[dict[str, Any]], notes: list[str]) -> None:
    print("\nms per training step (median over rounds); AA/plain: same mode, same run; vs eager: same model\n")
    print("| model | width | attention | impl | mode | ms/step | AA/plain | vs eager | warm-up s | peak MiB |")
    print("|---|---:|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["model"], str(r["base_width"] or "full"), r["attention"], r["impl"] or "-", r["mode"]]
        cells += [f"{r[k]:{spec}}" if k in r else "-" for k, spec in (
            ("step_ms", ".1f"), ("aa_over_plain", ".2f"), ("over_eager", ".2f"), ("warmup_s", ".1f"),
            ("peak_mib", ".0f"))]
        print("| " + " | ".join(cells) + " |" + (f" {r['error']}" if "error" in r else ""))
    for note in notes:
        print(f"\n{note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--model", default="wrn-28-10", help="resnet34 or wrn-D-K")
    p.add_argument("--base-width", type=int, default=None,
                   help="stage-1 width (default: 4 on CPU, with the smoke scale's 4 heads; full on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 4 CPU, 512 CUDA)")
    p.add_argument("--impls", nargs="+", default=None, choices=[i for i in IMPLS if i != "reference"],
                   help="attention impls of the AA model (default: auto on CPU; auto, sdpa, chunked and, where "
                        "installed, triton on CUDA)")
    p.add_argument("--modes", nargs="+", default=None, choices=MODES,
                   help="eager and torch.compile modes (default: eager default on CPU; eager default "
                        "reduce-overhead on CUDA)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no code generation)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 2 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first, where compilation happens (default: 2 CPU, 5 CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="rounds over all cases (default 3)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"),
                   help="autocast (auto: what aacn train does: bf16 on CUDA, none on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: what aacn train does (on for CUDA)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 1 on CPU, steadiest on a shared machine; CUDA: torch's)")
    p.add_argument("--out", default="benchmarks/results/compile_step.json", help="JSON of every case")
    args = p.parse_args(argv)
    device = distributed.resolve_device(args.device)
    gpu = device.type == "cuda"
    for key, (on_cpu, on_gpu) in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, on_gpu if gpu else on_cpu)
    if args.impls is None:
        args.impls = ["auto", "sdpa", "chunked"] + (["triton"] if HAS_TRITON else []) if gpu else ["auto"]
    if args.amp == "auto" and not gpu:
        args.amp = "none"  # aacn train's CPU default
    for key in ("batch", "steps", "repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    args.device = str(device)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"device {device}; torch {torch.__version__}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
          f"load average {load:.1f}; {args.model} width {args.base_width or 'full'}, batch {args.batch}, "
          f"{args.repeats} rounds of {args.steps} steps after {args.warmup} warm-up", flush=True)
    rows, notes = measure(args, device)
    print_table(rows, notes)
    result = {"benchmark": "compile_step", "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "args": vars(args),
              "notes": notes, "rows": rows}
    save_result(result, args.out, load)
    return result


if __name__ == "__main__":
    main()
