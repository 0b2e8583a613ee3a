"""Training-step time of the ``cpu`` scale's attention rows against their plain networks, on the CPU.

For each architecture of the ``cpu`` scale (its preset config: model, width, batch, channels-last, attention
settings) the step (forward, cross-entropy, backward, SGD update) is timed for:

- ``plain``: the network without attention;
- ``aa-cpu``: the paper placement with ``attention_impl="cpu"`` (the C++ kernel, what ``auto`` picks);
- ``aa-sdpa``: the same with ``attention_impl="sdpa"`` (relative terms folded into wider heads);
- ``floor``: the same placement without relative terms through ``F.scaled_dot_product_attention``: the
  attention every implementation must at least do, so the AA step can be judged against it.

All variants are built first and then timed in interleaved rounds (best of ``--rounds``), so a change in the
machine's load touches them alike; the ratios to ``plain`` and to ``floor`` are the result. Prints a table and
writes JSON (default ``benchmarks/results/cpu_study_step.json``).

    python benchmarks/cpu_study_step.py                   # WRN-16-2 and ResNet-34 (1/4 width), batch 128
    python benchmarks/cpu_study_step.py --batch 32 --rounds 5
    python benchmarks/cpu_study_step.py --models AA-WRN-16-2 --variants aa-cpu --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import save_result  # noqa: E402

from aacn.experiments.presets import preset  # noqa: E402
from aacn.models import create_model  # noqa: E402

VARIANTS = {"plain": {"attention": "none"}, "aa-cpu": {"attention_impl": "cpu"},
            "aa-sdpa": {"attention_impl": "sdpa"}, "floor": {"relative": False, "attention_impl": "sdpa"}}


def study_configs() -> dict[str, Any]:
    """The ``cpu`` scale's paper-placement attention rows of Table 2, by label."""
    return {label: cfg for label, cfg in preset("table2", "cpu", placement="paper")
            if cfg.attention == "paper" and cfg.relative}


def step_fn(config: Any, variant: dict[str, Any], batch: int):
    model = create_model(config.replace(**variant).arch)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, 32, 32).to(memory_format=fmt)
    labels = torch.randint(0, config.arch.num_classes, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()  # warm-up (and the kernel's first build)
    return step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=None, help="batch (default: the preset's, 128)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best is kept")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="which variants to time (plain and floor are always timed: the ratios need them)")
    p.add_argument("--models", nargs="+", default=None, help="preset labels to time (default: all), e.g. AA-WRN-16-2")
    p.add_argument("--out", default="benchmarks/results/cpu_study_step.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    configs = study_configs()
    unknown = sorted(set(args.models or []) - set(configs))
    if unknown:
        p.error(f"--models: unknown label(s) {', '.join(unknown)}; choose from {', '.join(configs)}")
    variants = {n: v for n, v in VARIANTS.items() if n in {*args.variants, "plain", "floor"}}
    rows = []
    for label, config in configs.items():
        if args.models and label not in args.models:
            continue
        batch = args.batch or config.batch_size
        steps = {name: step_fn(config, variant, batch) for name, variant in variants.items()}
        best = {name: float("inf") for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                best[name] = min(best[name], time.perf_counter() - start)
        row = {"model": label, "batch": batch, "threads": torch.get_num_threads(), "seconds": best,
               "vs_plain": {n: best[n] / best["plain"] for n in best},
               "aa_cpu_vs_floor": best["aa-cpu"] / best["floor"] if "aa-cpu" in best else None}
        rows.append(row)
        print(f"{label} (batch {batch}, {row['threads']} threads): "
              + ", ".join(f"{n} {best[n]:.3f} s ({row['vs_plain'][n]:.2f}x)" for n in best)
              + (f"; AA with the kernel / floor {row['aa_cpu_vs_floor']:.2f}x" if "aa-cpu" in best else ""))
    return save_result({"benchmark": "cpu_study_step", "rows": rows}, args.out, load_before)


if __name__ == "__main__":
    main()
