"""Speed and memory of the 2D relative self-attention implementations, as ratios to ``reference`` and to plain
attention.

For each grid size S (an S x S grid), each implementation runs forward + backward of
``relative_attention_2d(q, k, v, rel_h, rel_w, impl=...)`` with batch B, Nh heads, dkh = dvh = 20 (defaults).
``plain`` is ``F.scaled_dot_product_attention`` on the same q, k, v (B, Nh, S*S, dkh/dvh) without relative
logits: the floor any relative implementation is compared with (column ``t/plain``, wall time, and ``c/plain``,
process CPU time, the steadier one where other jobs share the cores).
``--layout channels`` gives ``relative_attention_2d`` q, k, v as views of channel-major ``(B, Nh, d, S, S)``
storage, the layout :class:`~aacn.nn.aaconv.AAConv2d` hands it (no copy to the C++ kernel's heads); the default
``heads`` gives contiguous ``(B, Nh, S, S, d)`` tensors. ``plain`` always gets contiguous ``(B, Nh, S*S, d)``
copies, its own best layout.
``--study`` runs the attention shapes of the CPU study's AA-WRN-16-2 instead (B=128, Nh=1; 32x32 with dkh=6,
dvh=3; 16x16 with 13, 6; 8x8 with 26, 13): tiny heads, where the exponentials dominate.

Memory
  CPU: one fresh subprocess per case runs one forward + backward; its memory is the peak RSS (``ru_maxrss``)
  minus the peak RSS of a baseline subprocess that only imports the same modules and allocates the same
  inputs ("extra peak"); both first run every impl once on a 2x2 grid so that one-off library set-up
  (autograd engine, kernel initialisation) is not counted.
  By default every memory subprocess runs with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc's
  *dynamic* mmap threshold otherwise serves freed 128 KiB..32 MiB blocks from a heap it rarely returns, so RSS
  depends on the allocation history rather than on the tensors alive (``--glibc-dynamic-mmap`` measures that
  default behaviour instead). The timing subprocess keeps the environment's malloc settings, as training does:
  with the static threshold every large temporary is a fresh mapping whose pages fault in on first touch, which
  slows the implementations with more temporaries (the relative-logit tables and their gradients) and measures
  the allocator rather than the attention.
  CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated for the inputs.
Time
  One more fresh subprocess per size runs the implementations interleaved (one warm-up round, then
  ``--repeats`` rounds) so that load from other processes hits all of them alike; reported is the best round.
  CPU time (``time.process_time``) is recorded too. Rounds stop early after ``--max-seconds`` per size.

Threads: 1 by default on CPU. With 2 threads on a machine shared with other jobs, every OpenMP parallel region
waits for a descheduled thread, which penalises implementations with many smaller ops (``sdpa`` runs its
kernel over chunks) far more than ``reference``; use ``--threads 2`` on an idle machine.

``reference`` is skipped where its estimated memory does not fit. Prints a table; writes JSON to ``--out``.

    python benchmarks/aa_layer.py                          # CPU, sizes 8 16 32 (~2 minutes)
    python benchmarks/aa_layer.py --sizes 64 --repeats 0   # memory growth at 64x64 (reference does not fit)
    python benchmarks/aa_layer.py --device cuda --sizes 8 16 32 64
    python benchmarks/aa_layer.py --study --impls cpu sdpa # tiny heads of AA-WRN-16-2 at batch 128
    python benchmarks/aa_layer.py --sizes 16 32 --batch 8 --impls cpu --layout channels --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from aacn.nn.functional import IMPLS, relative_attention_2d, resolve_impl
from aacn.nn.triton_attention import triton_unavailable_reason

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "aa_layer.json"
REFERENCE_TENSORS = 8  # (B, Nh, HW, HW) float32 tensors alive at the reference's peak (conservative estimate)
MMAP_THRESHOLD = "131072"  # glibc's initial threshold, made static
PLAIN = "plain"  # F.scaled_dot_product_attention without relative logits, same B, Nh, HW, dkh, dvh
STUDY = [(32, 6, 3), (16, 13, 6), (8, 26, 13)]  # (S, dkh, dvh) of AA-WRN-16-2's attention layers


def _inputs(cfg: dict, device: str) -> list[torch.Tensor]:
    """q, k, v, rel_h, rel_w (leaf tensors with grad; q, k, v in ``cfg["layout"]``), the output gradient, and
    contiguous (B, Nh, S*S, d) leaf copies of q, k, v for ``plain``; seeded."""
    gen = torch.Generator(device=device).manual_seed(0)
    b, nh, s, dkh, dvh = cfg["batch"], cfg["heads"], cfg["size"], cfg["dkh"], cfg["dvh"]
    dtype = getattr(torch, cfg["dtype"])

    def head(d: int) -> torch.Tensor:
        if cfg.get("layout", "heads") == "channels":  # a (B, Nh, S, S, d) view of (B, Nh, d, S, S) storage
            t = torch.randn(b, nh, d, s, s, generator=gen, device=device, dtype=dtype).permute(0, 1, 3, 4, 2)
        else:
            t = torch.randn(b, nh, s, s, d, generator=gen, device=device, dtype=dtype)
        return t.requires_grad_()

    tensors = [head(dkh), head(dkh), head(dvh)] + [
        torch.randn(2 * s - 1, dkh, generator=gen, device=device, dtype=dtype).requires_grad_() for _ in range(2)]
    grad_out = torch.randn(b, nh, s, s, dvh, generator=gen, device=device, dtype=dtype)
    plain = [t.detach().flatten(2, 3).contiguous().requires_grad_() for t in tensors[:3]]
    return [*tensors, grad_out, *plain]


def _step(impl: str, tensors: list[torch.Tensor]) -> None:
    inputs, grad_out, plain = tensors[:5], tensors[5], tensors[6:]
    for t in inputs + plain:
        t.grad = None
    if impl == PLAIN:
        F.scaled_dot_product_attention(*plain).backward(grad_out.flatten(2, 3))
        return
    relative_attention_2d(*inputs, impl=impl).backward(grad_out)


def _timed_step(impl: str, tensors: list[torch.Tensor], device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward + backward."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    _step(impl, tensors)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def _time_interleaved(cfg: dict, impls: list[str], device: str) -> dict:
    """Warm-up round plus ``repeats`` rounds over all impls; per impl the best round's wall and CPU time."""
    tensors = _inputs(cfg, device)
    rounds: dict[str, list[tuple[float, float]]] = {impl: [] for impl in impls}
    start = time.perf_counter()
    for r in range(1 + cfg["repeats"]):
        for impl in impls:
            rounds[impl].append(_timed_step(impl, tensors, device))
        if r >= 1 and time.perf_counter() - start > cfg["max_seconds"]:
            break
    out = {}
    for impl, times in rounds.items():
        timed = times[1:] or times  # the warm-up round counts only when it is the only one
        best = min(timed)
        out[impl] = {"time_s": best[0], "cpu_s": best[1], "times": [t[0] for t in times]}
    return out


def runnable_impls(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The impls that run on ``device`` in ``dtype`` (``triton`` needs CUDA and the triton package)."""
    return [i for i in IMPLS if i != "triton" or triton_unavailable_reason(device, dtype) is None]


def _warm_up_libraries(cfg: dict) -> None:
    """Run every impl once on a 2x2 grid: one-off library set-up (autograd engine, kernels) is not counted."""
    tiny = _inputs(dict(cfg, batch=1, heads=1, size=2), "cpu")
    for impl in [PLAIN, *runnable_impls(torch.device("cpu"), tiny[0].dtype)]:
        _step(impl, tiny)


def worker(cfg: dict) -> dict:
    """One CPU job in this fresh process: ``memory`` (impl None = baseline) or ``time`` (all impls)."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    _warm_up_libraries(cfg)
    if cfg["job"] == "time":
        return _time_interleaved(cfg, cfg["impls"], "cpu")
    tensors = _inputs(cfg, "cpu")
    if cfg["impl"] is not None:
        _step(cfg["impl"], tensors)
    return {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux


def _run_subprocess(cfg: dict, dynamic_mmap: bool) -> dict:
    """Runs one worker job in a fresh process; memory jobs with the static mmap threshold unless
    ``dynamic_mmap``, timing jobs with the environment's malloc settings."""
    env = dict(os.environ)
    if not dynamic_mmap and cfg["job"] == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _available_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as fh:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
    return info.get("MemAvailable", info["MemTotal"])


def _reference_fits(cfg: dict, device: str) -> bool:
    n = cfg["size"] ** 2
    return REFERENCE_TENSORS * cfg["batch"] * cfg["heads"] * n * n * 4 < 0.8 * _available_bytes(device)


def _cuda_memory(cfg: dict) -> dict:
    tensors = _inputs(cfg, "cuda")
    try:
        _step(cfg["impl"], tensors)  # plan/compile kernels outside the measurement
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _step(cfg["impl"], tensors)
        torch.cuda.synchronize()
        return {"extra_peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        return {"error": str(exc).splitlines()[0]}
    finally:
        del tensors
        torch.cuda.empty_cache()


def measure_size(cfg: dict, impls: list[str], device: str, dynamic_mmap: bool) -> dict[str, dict]:
    """Memory and time of every impl at one grid size; skipped impls carry an ``error``."""
    results: dict[str, dict] = {}
    runnable = []
    for impl in impls:
        if impl == "reference" and not _reference_fits(cfg, device):
            results[impl] = {"error": "skipped: estimated memory does not fit"}
        else:
            runnable.append(impl)
    if device == "cpu":
        baseline = _run_subprocess(dict(cfg, job="memory", impl=None), dynamic_mmap)
        for impl in runnable:
            res = _run_subprocess(dict(cfg, job="memory", impl=impl), dynamic_mmap)
            results[impl] = res if "error" in res else {"extra_peak_mb": res["maxrss_mb"] - baseline["maxrss_mb"]}
    else:
        for impl in runnable:
            results[impl] = _cuda_memory(dict(cfg, impl=impl))
    runnable = [i for i in runnable if "error" not in results[i]]
    if runnable:
        if device == "cpu":
            timing = _run_subprocess(dict(cfg, job="time", impls=runnable), dynamic_mmap)
        else:
            timing = _time_interleaved(cfg, runnable, "cuda")
        for impl in runnable:
            results[impl].update(timing.get(impl, {"error": timing.get("error", "timing failed")}))
    return results


def _fmt(value: float | None, spec: str) -> str:
    return "-".rjust(len(format(0.0, spec))) if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32], help="grid sides S (S x S)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dkh", type=int, default=20)
    parser.add_argument("--dvh", type=int, default=20)
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    choices = [i for i in IMPLS if i != "auto"]
    parser.add_argument("--impls", nargs="+", default=None, choices=choices,
                        help="default: all that run on the device (triton: CUDA only)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after one warm-up round")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="stop adding rounds after this per size")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: 1 on CPU, steady on a shared machine)"
    )
    parser.add_argument("--layout", default="heads", choices=["heads", "channels"],
                        help="q, k, v as contiguous (B, Nh, S, S, d) tensors (heads) or as views of channel-major "
                             "(B, Nh, d, S, S) storage, AAConv2d's layout (channels)")
    parser.add_argument("--study", action="store_true",
                        help="AA-WRN-16-2's shapes: B=128, Nh=1, (S, dkh, dvh) in " + str(STUDY))
    parser.add_argument("--glibc-dynamic-mmap", action="store_true",
                        help="memory: keep glibc's default malloc behaviour (timing always does)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.impls is None:
        args.impls = [i for i in runnable_impls(torch.device(args.device), getattr(torch, dtype)) if i != "auto"]
    impls = ["reference", PLAIN] + [i for i in args.impls if i not in ("reference", PLAIN)]
    shapes = [(size, args.dkh, args.dvh) for size in args.sizes]
    if args.study:
        args.batch, args.heads, shapes = 128, 1, STUDY
    base_cfg = dict(
        batch=args.batch, heads=args.heads, dkh=args.dkh, dvh=args.dvh, dtype=dtype, repeats=args.repeats,
        max_seconds=args.max_seconds, threads=args.threads, layout=args.layout,
    )
    rows = []
    for size, dkh, dvh in shapes:
        cfg = dict(base_cfg, size=size, dkh=dkh, dvh=dvh)
        results = measure_size(cfg, impls, args.device, args.glibc_dynamic_mmap)
        probe = torch.zeros(args.batch, args.heads, size, size, 1, dtype=getattr(torch, dtype), device=args.device)
        ref, plain = results["reference"], results[PLAIN]
        for impl in impls:
            r = results[impl]
            ok = "error" not in r and "error" not in ref
            rows.append({
                "size": size, "dkh": dkh, "dvh": dvh, "impl": impl, "auto": resolve_impl("auto", probe), **r,
                "time_ratio": r["time_s"] / ref["time_s"] if ok else None,
                "memory_ratio": r["extra_peak_mb"] / ref["extra_peak_mb"] if ok else None,
                "plain_ratio": r["time_s"] / plain["time_s"] if "error" not in r and "error" not in plain else None,
                # process CPU time: steadier than wall time where other jobs share the cores (one thread)
                "plain_cpu_ratio": r["cpu_s"] / plain["cpu_s"] if "error" not in r and "error" not in plain else None,
            })
            print(f"  S={size} {impl}: {rows[-1]}", file=sys.stderr, flush=True)
    threads = torch.get_num_threads()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    malloc = ("glibc dynamic mmap threshold" if args.glibc_dynamic_mmap
              else f"memory with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}, timing with the default malloc")
    heads = "dkh, dvh per row" if args.study else f"dkh={args.dkh} dvh={args.dvh}"
    print(f"\nrelative_attention_2d fwd+bwd, B={args.batch} Nh={args.heads} {heads} {dtype}, {args.layout} layout, "
          f"{args.device} ({device_name}, {os.cpu_count()} cores, {threads} threads, {malloc})")
    print(f"{'S':>4} {'dkh':>4} {'dvh':>4} {'impl':>10} {'wall s':>8} {'cpu s':>8} {'extra MB':>9} {'time/ref':>8} "
          f"{'mem/ref':>8} {'t/plain':>8} {'c/plain':>8}  auto  note")
    for r in rows:
        print(f"{r['size']:>4} {r['dkh']:>4} {r['dvh']:>4} {r['impl']:>10} {_fmt(r.get('time_s'), '8.3f')} "
              f"{_fmt(r.get('cpu_s'), '8.3f')} {_fmt(r.get('extra_peak_mb'), '9.1f')} {_fmt(r['time_ratio'], '8.3f')} "
              f"{_fmt(r['memory_ratio'], '8.3f')} {_fmt(r['plain_ratio'], '8.3f')} "
              f"{_fmt(r['plain_cpu_ratio'], '8.3f')}  "
              f"{r['auto'] if r['impl'] == r['auto'] else '':>4}  "
              f"{r.get('error', '')}")
    report = {
        "benchmark": "aa_layer", "device": args.device, "device_name": device_name, "threads": threads,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "malloc": malloc, "config": base_cfg,
        "memory": "CPU: extra peak RSS over a baseline subprocess; CUDA: max_memory_allocated over the inputs",
        "time": "best of the interleaved timed rounds after one warm-up round",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
