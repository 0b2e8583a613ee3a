"""Issue 5's GPU targets in one run: goal against measured, from real ``aacn train`` runs.

| target | how it is measured | goal |
|---|---|---|
| plain epoch | ``aacn train --model wrn-28-10 --recipe fast --batch-size 512 --compile``, 2 epochs | <= 8 s |
| AA / plain epoch | the same with ``--attention paper --attention-impl I`` for each ``--impls`` | <= 1.5x |
| fast accuracy | (``--accuracy``) the plain run for the fast scale's 90 epochs | >= 95% in <= 600 s |
| N-GPU scaling | (with 2+ GPUs) ``benchmarks/train_step.py --distributed N``, batch 128 per GPU | >= 90% |

An epoch time is the last epoch's ``epoch_time_s`` in ``metrics.jsonl`` (the first epoch also compiles). Every
run is a subprocess; one that fails is reported as such and the others still run. CIFAR-10 comes from
``--data-dir`` (or is downloaded). Prints a markdown table and writes JSON to ``--out``.

    python benchmarks/gpu_targets.py --data-dir DIR                  # the speed targets, ~3 minutes on an H100
    python benchmarks/gpu_targets.py --data-dir DIR --accuracy       # + the 90-epoch run, ~7 more minutes
    python benchmarks/gpu_targets.py --device cpu --model wrn-10-2 --batch-size 50 --epochs 2 --subset 200 \\
        --no-compile --data-dir DIR                                  # a quick check of the script itself
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from aacn.experiments.presets import scale_settings

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"plain_epoch_s": 8.0, "aa_ratio": 1.5, "accuracy": 95.0, "accuracy_time_s": 600.0, "scaling": 0.90}


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()
    return lines[-1]


def train(args: argparse.Namespace, out: Path, epochs: int, *extra: str) -> dict[str, Any]:
    """One ``aacn train`` subprocess; its results and per-epoch rows, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "aacn", "train", "--model", args.model, "--recipe", "fast", "--batch-size",
           str(args.batch_size), "--epochs", str(epochs), "--device", args.device, "--out", str(out),
           "--no-progress", *(["--compile"] if args.compile else []), *extra]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.subset:
        cmd += ["--subset", str(args.subset), "--val-size", str(max(1, args.subset // 10))]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": _last_line(done)}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    return {"epoch_time_s": rows[-1]["epoch_time_s"], "test_acc": results["test_acc"],
            "wall_time_s": results["wall_time_s"], "peak_mem_bytes": results.get("peak_mem_bytes")}


def scaling(args: argparse.Namespace, gpus: int, tmp: Path) -> dict[str, Any]:
    """``train_step.py --distributed N`` over all GPUs; its efficiency, or ``{"error": ...}``."""
    out = tmp / "scaling.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--device", "cuda", "--models", args.model,
           "--batch", "128", "--distributed", str(gpus), "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": _last_line(done)}
    row = json.loads(out.read_text())["distributed"][0]
    return {"gpus": gpus, "efficiency": row["scaling_efficiency"], "images_per_s_1": row["one"]["images_per_s"],
            "images_per_s_n": row["many"]["images_per_s"]}


def rows_of(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, goal, measured, met) rows of the summary table."""
    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("yes" if ok else "**no**")

    plain = result["plain"]
    out = []
    if "error" in plain:
        out.append(("plain epoch", f"<= {GOALS['plain_epoch_s']:g} s", f"failed: {plain['error']}", "-"))
    else:
        t, goal = plain["epoch_time_s"], GOALS["plain_epoch_s"]
        out.append(("plain epoch", f"<= {goal:g} s", f"{t:.2f} s", verdict(t <= goal)))
    for impl, aa in result["attention"].items():
        name = f"AA paper / plain epoch ({impl})"
        if "error" in aa or "error" in plain:
            out.append((name, f"<= {GOALS['aa_ratio']:g}x", f"failed: {aa.get('error', 'plain run failed')}", "-"))
            continue
        ratio = aa["epoch_time_s"] / plain["epoch_time_s"]
        out.append((name, f"<= {GOALS['aa_ratio']:g}x", f"{ratio:.2f}x ({aa['epoch_time_s']:.2f} s)",
                    verdict(ratio <= GOALS["aa_ratio"])))
    acc = result.get("accuracy")
    if acc is not None:
        goal = f">= {GOALS['accuracy']:g}% in <= {GOALS['accuracy_time_s']:g} s"
        if "error" in acc:
            out.append(("fast accuracy", goal, f"failed: {acc['error']}", "-"))
        else:
            ok = acc["test_acc"] >= GOALS["accuracy"] and acc["wall_time_s"] <= GOALS["accuracy_time_s"]
            out.append(("fast accuracy", goal, f"{acc['test_acc']:.2f}% in {acc['wall_time_s']:.0f} s", verdict(ok)))
    scale = result.get("scaling")
    goal = f">= {100 * GOALS['scaling']:.0f}%"
    if scale is None:
        out.append(("N-GPU scaling", goal, f"not measured: {torch.cuda.device_count()} GPU(s)", "-"))
    elif "error" in scale:
        out.append(("N-GPU scaling", goal, f"failed: {scale['error']}", "-"))
    else:
        out.append((f"{scale['gpus']}-GPU scaling", goal, f"{100 * scale['efficiency']:.1f}%",
                    verdict(scale["efficiency"] >= GOALS["scaling"])))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py (default: aacn's cache, downloading)")
    p.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (to check the script)")
    p.add_argument("--model", default="wrn-28-10")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the timing runs (the last one is timed)")
    p.add_argument("--subset", type=int, default=None, help="train on the first N images (script checks)")
    p.add_argument("--impls", nargs="+", default=["auto", "triton"], help="attention impls of the AA runs")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--accuracy", action="store_true",
                   help="also train the plain model for the fast scale's epochs")
    p.add_argument("--out", default="benchmarks/results/gpu_targets.json")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine (use --device cpu to check the script)")
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None
    result: dict[str, Any] = {"benchmark": "gpu_targets", "device": args.device, "gpu": gpu,
                              "torch": torch.__version__, "args": vars(args), "goals": GOALS}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result["plain"] = train(args, tmp / "plain", args.epochs)
        result["attention"] = {
            impl: train(args, tmp / f"aa-{impl}", args.epochs, "--attention", "paper", "--attention-impl", impl)
            for impl in args.impls
        }
        if args.accuracy:
            result["accuracy"] = train(args, tmp / "accuracy", scale_settings(args.model, "fast")["epochs"])
        gpus = torch.cuda.device_count() if gpu else 0
        result["scaling"] = scaling(args, gpus, tmp) if gpus >= 2 else None
    table = ["| target | goal | measured | met |", "|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows_of(result)]
    result["table"] = table
    print(f"\n{gpu or args.device}, torch {torch.__version__}\n")
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
