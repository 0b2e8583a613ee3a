"""Training-step time and peak memory of each attention-augmented model relative to its plain model.

Cases per model: the plain network, and the ``seed`` and ``paper`` placements, each with the reference
attention (``attention_impl="reference"``, materialises the ``(HW)^2`` logits) and the memory-efficient ones
(``--impls``; default ``attention_impl="auto"``, and on CUDA also ``"triton"``). The step is the real one
(``StepBench`` of ``benchmarks/train_step.py``: real ``DeviceLoader``, recipe ``paper-sgd``, the autocast /
channels-last that ``aacn train`` uses by default on the device), on synthetic CIFAR-size images.

Every case runs in a fresh subprocess (a crash or OOM stays there; memory is not shared between cases).
Memory
  CPU: the subprocess's peak RSS (``ru_maxrss``), and the part of it above the RSS once model, optimiser and data
  are set up ("step extra": activations, saved attention tensors, gradients, optimiser state). glibc's dynamic
  mmap threshold is made static (``MALLOC_MMAP_THRESHOLD_=131072``) so freed large blocks go back to the OS
  and RSS follows the live tensors.
  CUDA: ``torch.cuda.max_memory_allocated()`` over the steps (and the part above the set-up allocation).
Time
  median wall time of ``--steps`` steps after ``--warmup``; on CPU also process (CPU) time, which other load
  on the machine disturbs less. With ``--repeats R`` all cases run R rounds (fresh subprocesses), best kept.

On CPU the reference attention is skipped where its estimated logits do not fit in the available memory (the
OOM killer could hit other processes); on CUDA it is tried, and an out-of-memory is recorded as such.
Prints ratios to the plain model; writes JSON to ``--out``.

    python benchmarks/models.py                       # CPU: narrow models, batch 8 (~2 min on 2 cores)
    python benchmarks/models.py --device cuda         # WRN-28-10 and ResNet-34, full width, batch 128
    python benchmarks/models.py --device cuda --models wrn-28-10 --batch 128
CUDA target: AA-WRN-28-10 (paper, memory-efficient) <= 1.5x the plain step time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import CPU_WIDTHS, StepBench, Variant, save_result, sync  # noqa: E402

from aacn.experiments.presets import TABLE2_PLACEMENTS  # noqa: E402
from aacn.models import create_model  # noqa: E402
from aacn.nn.functional import IMPLS  # noqa: E402
from aacn.nn.triton_attention import HAS_TRITON  # noqa: E402
from aacn.train import distributed  # noqa: E402

MMAP_THRESHOLD = "131072"


def cases(impls: list[str], skip_reference: bool) -> list[tuple[str, str | None]]:
    """(placement, attention_impl) pairs: the plain model, then per placement the reference and each impl."""
    out: list[tuple[str, str | None]] = [("none", None)]
    for placement in TABLE2_PLACEMENTS:
        out += [(placement, impl) for impl in ([] if skip_reference else ["reference"]) + impls]
    return out
REFERENCE_TENSORS = 3  # (B, Nh, HW, HW) float32 tensors per layer kept for backward or alive at the peak


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One case in this (fresh) process: set up, warm up, time steps, read the peak memory."""
    device = distributed.resolve_device(cfg["device"])
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    ctx = distributed.Context(device=device)
    mode = cfg.get("compile_mode")  # None: eager; else torch.compile(mode=...) (warm-up steps compile)
    variant = Variant("case", channels_last=cfg["channels_last"], amp=cfg["amp"], compile=mode is not None,
                      compile_mode=mode or "default")
    bench = StepBench(cfg["model"], cfg["model_kwargs"], variant, batch=cfg["batch"], ctx=ctx)
    sync(device)
    setup = torch.cuda.memory_allocated(device) if device.type == "cuda" else _maxrss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(cfg["warmup"]):
        bench.step().item()
    wall, cpu = [], []
    for _ in range(cfg["steps"]):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        bench.step().item()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _maxrss()
    return {"step_s": statistics.median(wall), "step_cpu_s": statistics.median(cpu), "step_s_each": wall,
            "peak_bytes": peak, "setup_bytes": setup, "step_extra_bytes": peak - setup, "params": bench.params}


def reference_estimate(model: str, kwargs: dict[str, Any], batch: int) -> int:
    """Bytes of the reference attention's ``(HW)^2`` tensors over all augmented layers (kept for backward)."""
    layers = create_model(model, num_classes=10, **kwargs).attention_layers
    return sum(REFERENCE_TENSORS * 4 * batch * layer["num_heads"] * (layer["resolution"][0] * layer["resolution"][1])
               ** 2 for layer in layers)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def run_case(cfg: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    oom = "OutOfMemoryError" in done.stderr or "out of memory" in done.stderr.lower() or done.returncode == -9
    return {"error": "out of memory" if oom else f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}


def measure(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    amp = {"auto": "bf16" if device.type == "cuda" else None, "none": None}.get(args.amp, args.amp)
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    rows: list[dict[str, Any]] = []
    for name in args.models:
        width = args.base_width if args.base_width is not None else (
            CPU_WIDTHS.get(name) if device.type == "cpu" else None)
        for placement, impl in cases(args.impls, args.skip_reference):
            kwargs: dict[str, Any] = {} if width is None else {"base_width": width}
            if placement != "none":
                kwargs.update(args.model_kwargs, attention=placement, attention_impl=impl)
            row = {"model": name, "base_width": width, "placement": placement, "attention_impl": impl,
                   "model_kwargs": kwargs,
                   "batch": args.batch, "amp": amp or "none", "channels_last": channels_last, "rounds": []}
            if impl == "reference":
                need = reference_estimate(name, kwargs, args.batch)
                row["reference_estimate_bytes"] = need
                if device.type != "cuda" and need > 0.6 * available_bytes(device):  # CUDA: try, an OOM is caught
                    row["error"] = f"skipped: reference needs ~{need / 2**30:.1f} GiB"
            row["cfg"] = {"model": name, "model_kwargs": kwargs, "batch": args.batch, "steps": args.steps,
                          "warmup": args.warmup, "device": str(device), "amp": amp,
                          "channels_last": channels_last, "threads": args.threads}
            rows.append(row)
    for r in range(args.repeats):  # rounds: every case once per round, so slow spells hit all cases alike
        for row in rows:
            if "error" in row:
                continue
            print(f"  round {r + 1}: {row['model']} {row['placement']} {row['attention_impl'] or ''}", flush=True)
            result = run_case(row["cfg"])
            if "error" in result:
                row["error"] = result["error"]
            else:
                row["rounds"].append(result)
    for row in rows:
        if row["rounds"]:
            best = min(row["rounds"], key=lambda res: res["step_s"])
            row.update({k: best[k] for k in ("step_s", "step_cpu_s", "params")})
            first = row["rounds"][0]  # memory does not depend on load: the first round's
            row.update({k: first[k] for k in ("peak_bytes", "setup_bytes", "step_extra_bytes")})
    for row in rows:
        plain = next(p for p in rows if p["model"] == row["model"] and p["placement"] == "none")
        for key in ("step_s", "step_cpu_s", "peak_bytes", "step_extra_bytes", "params"):
            if key in row and key in plain:
                row[f"{key}_ratio"] = row[key] / plain[key]
    return rows


def _fmt(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


def print_table(rows: list[dict[str, Any]], device: torch.device) -> None:
    mem = "peak RSS" if device.type == "cpu" else "peak alloc"
    print(f"\nratios to the plain model of the same run (x); time = median step; {mem} of the fresh process; "
          "extra = peak above the set-up memory\n")
    print(f"| model | width | attention | impl | step ms | x | cpu ms | x | {mem} MiB | x | extra MiB | x | params x |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ms = {k: r[k] * 1e3 for k in ("step_s", "step_cpu_s") if k in r}
        mib = {k: r[k] / 2**20 for k in ("peak_bytes", "step_extra_bytes") if k in r}
        cells = [r["model"], str(r["base_width"] or "full"), r["placement"], r["attention_impl"] or "-",
                 _fmt(ms, "step_s", ".0f"), _fmt(r, "step_s_ratio", ".2f"), _fmt(ms, "step_cpu_s", ".0f"),
                 _fmt(r, "step_cpu_s_ratio", ".2f"), _fmt(mib, "peak_bytes", ".0f"), _fmt(r, "peak_bytes_ratio", ".2f"),
                 _fmt(mib, "step_extra_bytes", ".0f"), _fmt(r, "step_extra_bytes_ratio", ".2f"),
                 _fmt(r, "params_ratio", ".3f")]
        note = f" {r['error']}" if "error" in r else ""
        print("| " + " | ".join(cells) + " |" + note)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet34", "wrn-28-10"])
    p.add_argument("--base-width", type=int, default=None, help=f"default: full on GPUs; on CPU {CPU_WIDTHS}")
    p.add_argument("--batch", type=int, default=None, help="default: 128 on GPUs, 8 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default: 20 GPU, 5 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 GPU, 2 CPU)")
    p.add_argument("--model-kwargs", type=json.loads, default={},
                   help='extra create_model kwargs of the AA models, e.g. \'{"min_key_depth_per_head": 2}\' '
                        "(at narrow widths the default key depth, 20 per head, makes attention relatively wide)")
    p.add_argument("--skip-reference", action="store_true", help="only the plain and memory-efficient cases")
    p.add_argument("--impls", nargs="+", default=None, choices=[i for i in IMPLS if i != "reference"],
                   help="memory-efficient attention impls to compare (default: auto; on CUDA also triton)")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all cases (best time kept)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "none"),
                   help="autocast (auto: what aacn train does: bf16 on CUDA, none on CPU)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: what aacn train does (on for CUDA)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per case (default: 1 on CPU, steadiest on a shared machine; GPU: torch's)")
    p.add_argument("--out", default="benchmarks/results/models.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    device = distributed.resolve_device(args.device)
    gpu = device.type == "cuda"
    for key, on_gpu, on_cpu in (("batch", 128, 8), ("steps", 20, 5), ("warmup", 5, 2), ("threads", None, 1)):
        if getattr(args, key) is None:
            setattr(args, key, on_gpu if gpu else on_cpu)
    if args.impls is None:
        args.impls = ["auto"] + (["triton"] if gpu and HAS_TRITON else [])
    load = os.getloadavg()[0]
    print(f"device {device}; torch {torch.__version__}; {os.cpu_count()} CPUs, {args.threads or 'default'} "
          f"thread(s) per case; load average {load:.1f}; "
          f"batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, {args.repeats} round(s)", flush=True)
    rows = measure(args, device)
    print_table(rows, device)
    result = {"benchmark": "models", "device": str(device), "gpu": torch.cuda.get_device_name(device) if gpu else None,
              "args": {k: v for k, v in vars(args).items() if k != "worker"}, "rows": rows}
    save_result(result, args.out, load)
    return result


if __name__ == "__main__":
    main()
