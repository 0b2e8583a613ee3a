"""One GPU window, used to the minute: a priority-ordered plan whose every step leaves its records under results/.

    python benchmarks/gpu_plan.py --budget-s 600 --data-dir DIR            # run the steps that fit 10 minutes
    python benchmarks/gpu_plan.py --budget-s 600 --data-dir DIR --dry-run  # print the plan, run nothing

The plan, in order:

1. ``cuda_check``: every attention implementation (``triton`` included where installed) against the float64
   reference on CUDA, as ``benchmarks/cuda_check.py`` does -> ``results/checks/cuda_check.json``;
2. ``aa_step_time``: the training-step time of AA-WRN-28-10 with the paper's placement, once per attention
   implementation, against the plain WRN-28-10, each eager, under ``torch.compile`` and under
   ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) (``benchmarks/models.py``'s cases, batch 128, bf16,
   channels-last) -> ``results/checks/aa_step_time.json``;
3. ``airbench94`` then ``airbench96`` (``aacn anchor``) on the same images -> ``results/anchors/<name>-seed0/``;
4. the rows of Table 1, Table 2 (seed placement) and paper-cifar100 at the ``fast`` scale, in that order, seed
   0, from :func:`aacn.experiments.presets.preset`. A row that Table 1 and Table 2 share (the same config) runs
   once. Each trains (or resumes) in a scratch run folder (``--scratch``, default ``runs/gpu_plan/<row>``) with
   ``torch.compile``; when it ends its ``config.json``, ``metrics.jsonl`` and ``results.json`` (never
   checkpoints) are copied to ``results/fast/<row>/`` (``<row>`` is :func:`~aacn.experiments.presets.run_slug`'s
   name, with the dataset added for CIFAR-100 rows).

The script first prints the plan with each step's estimated time and state. Then it walks the plan in order and
starts a step only when its estimate fits the budget that remains; a step that does not fit waits for a later
window, and a shorter one after it may still run. Each step runs in a fresh process (this script with
``--step NAME``), so a crash, an out-of-memory or a broken CUDA context stays there, and its records are written
as soon as it ends. A step whose record exists is skipped, so the same command in a later window goes on where
the records stop. A row whose recorded config differs from today's preset (a changed schedule, say) is stale: it
is trained again and its record replaced.

Estimates are data (:data:`ESTIMATES`): seconds on one H100/H200, from the epoch times measured there, scaled by
each row's epochs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.experiments.presets import preset, run_slug
from aacn.files import atomic_write, write_json
from aacn.provenance import environment

BENCHMARKS = Path(__file__).resolve().parent
TABLES = ("table1", "table2", "paper-cifar100")
TABLE2_PLACEMENT = "seed"  # Table 2's attention rows; paper-cifar100's use the paper's placement
ANCHORS = ("airbench94", "airbench96")
RECORD_FILES = ("config.json", "metrics.jsonl", "results.json")

# Seconds on one H100/H200. Epoch times are the fast scale's: batch 512, bf16, channels-last, torch.compile,
# 45,000 training images per epoch, plain networks; attention multiplies them by its placement's factor
# (measured on WRN-28-10, used for every network).
ESTIMATES: dict[str, Any] = {
    "start_s": 20.0,  # a fresh process: interpreter, CUDA context, data loading, final evaluation
    "compile_s": 40.0,  # torch.compile's extra time in the first epoch
    "epoch_s": {"wrn": 3.8, "resnet": 2.0},
    "attention_factor": {"seed": 1.1, "paper": 18.0 / 3.8},
    "cuda_check_s": 60.0,  # 5 shapes x 2 dtypes x 5 implementations, forward and backward
    # 11 cases (STEP_TIME's), each a fresh process: build, warm up, 20 timed steps (30 s); compiling adds ~40 s
    "aa_step_time_s": 11 * 30.0 + 5 * 40.0,
    "anchor_s": {"airbench94": 10.0, "airbench96": 60.0},  # airbench's own training time
    "anchor_extra_s": 40.0,  # data loading and conversion, airbench's warm-up, per-epoch and TTA evaluation
}
STEP_TIME = {"model": "wrn-28-10", "batch": 128, "steps": 20, "warmup": 5, "amp": "bf16", "channels_last": True,
             "device": "cuda",
             # compile mode (None: eager) -> the attention impls measured in it (None: the plain network). Every
             # impl runs eager; the compiled modes, which cost a compilation each, take the plain network, the
             # default impl and triton (the kernel built for them).
             "cases": {None: [None, "auto", "sdpa", "chunked", "triton"], "default": [None, "auto", "triton"],
                       "reduce-overhead": [None, "auto", "triton"]}}


@dataclass(frozen=True)
class Step:
    """One step of the plan: ``record`` is the file whose existence marks it done."""

    name: str
    kind: str  # "cuda_check" | "aa_step_time" | "anchor" | "row"
    estimate_s: float
    record: Path
    detail: str
    anchor: str | None = None
    config: RunConfig | None = field(default=None, compare=False)


# ------------------------------------------------------------------------------------------------- plan
def row_estimate(config: RunConfig, attention: str | None) -> float:
    """Seconds for one fast-scale row: start-up, compile and ``config.epochs`` epochs of its network."""
    family = "wrn" if config.model.lower().startswith("wrn") else "resnet"
    factor = ESTIMATES["attention_factor"][attention] if attention else 1.0
    return ESTIMATES["start_s"] + ESTIMATES["compile_s"] + config.epochs * ESTIMATES["epoch_s"][family] * factor


def anchor_estimate(name: str) -> float:
    return ESTIMATES["anchor_s"][name] + ESTIMATES["anchor_extra_s"]


def _with_out(config: RunConfig, out: Path) -> RunConfig:
    return RunConfig.from_dict({**config.to_dict(), "out": str(out)})


def fast_rows(results: Path, scratch: Path, data_dir: str | None) -> list[Step]:
    """The fast-scale rows of :data:`TABLES` (seed 0), rows shared by two tables once, in table order."""
    steps: list[Step] = []
    seen: dict[str, RunConfig] = {}
    for table in TABLES:
        placement = "paper" if table == "paper-cifar100" else TABLE2_PLACEMENT
        runs = preset(table, "fast", placement=TABLE2_PLACEMENT, data_dir=data_dir, progress=False, compile=True)
        for label, config in runs:
            cifar100 = table == "paper-cifar100"
            slug = run_slug(f"{label} cifar100" if cifar100 else label, config.seed)
            if slug in seen:
                if seen[slug].differences(config):
                    raise ValueError(f"two rows are both named {slug} but differ: {seen[slug].differences(config)}")
                continue  # the same run in two tables
            seen[slug] = config
            attention = placement if label.startswith("AA") else None
            steps.append(Step(
                name=f"fast/{slug}", kind="row", estimate_s=row_estimate(config, attention),
                record=results / "fast" / slug / "results.json", config=_with_out(config, scratch / slug),
                detail=f"{table}: {label}, {config.epochs} epochs"))
    return steps


def build_plan(results: str | os.PathLike, *, data_dir: str | None = None,
               scratch: str | os.PathLike = "runs/gpu_plan") -> list[Step]:
    """Every step, in priority order (see the module docstring)."""
    results, scratch = Path(results), Path(scratch)
    checks = results / "checks"
    steps = [
        Step("cuda_check", "cuda_check", ESTIMATES["cuda_check_s"], checks / "cuda_check.json",
             "every attention impl on CUDA against the float64 reference"),
        Step("aa_step_time", "aa_step_time", ESTIMATES["aa_step_time_s"], checks / "aa_step_time.json",
             "AA-WRN-28-10 (paper placement) step time per impl against WRN-28-10"),
    ]
    steps += [Step(f"anchor/{name}", "anchor", anchor_estimate(name), results / "anchors" / f"{name}-seed0" /
                   "results.json", f"aacn anchor {name} on the same images", anchor=name) for name in ANCHORS]
    return steps + fast_rows(results, scratch, data_dir)


def state(step: Step) -> str:
    """``"recorded"`` (its record exists), ``"todo"``, or ``"stale: ..."`` (a row recorded with another config)."""
    if not step.record.is_file():
        return "todo"
    if step.kind != "row":
        return "recorded"
    try:
        recorded = RunConfig.load(step.record.parent / "config.json")
    except UserError as exc:
        return f"stale: {exc}"
    differences = step.config.differences(recorded)
    return f"stale: {'; '.join(differences)}" if differences else "recorded"


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def print_plan(plan: list[Step], budget_s: float, log: Callable[[str], Any] = print) -> None:
    log("| # | step | what | estimate | state |")
    log("|---:|---|---|---:|---|")
    todo = 0.0
    for i, step in enumerate(plan, 1):
        now = state(step)
        todo += 0.0 if now == "recorded" else step.estimate_s
        log(f"| {i} | {step.name} | {step.detail} | {_fmt_s(step.estimate_s)} | {now} |")
    log(f"\nstill to run: {_fmt_s(todo)} estimated; budget {_fmt_s(budget_s)}")


# ------------------------------------------------------------------------------------------------- run
Runner = Callable[[Step], None]


def execute(plan: list[Step], budget_s: float, runner: Runner, *, clock: Callable[[], float] = time.monotonic,
            log: Callable[[str], Any] = print) -> dict[str, str]:
    """Run, in order, each unrecorded step whose estimate fits the budget left; returns each step's outcome:
    ``recorded`` (before), ``done``, ``failed: ...`` or ``later`` (it did not fit)."""
    start = clock()
    outcome: dict[str, str] = {}
    for step in plan:
        if state(step) == "recorded":
            outcome[step.name] = "recorded"
            continue
        left = budget_s - (clock() - start)
        if step.estimate_s > left:
            log(f"[later] {step.name}: needs ~{_fmt_s(step.estimate_s)}, {_fmt_s(max(left, 0.0))} left")
            outcome[step.name] = "later"
            continue
        log(f"[start] {step.name}: ~{_fmt_s(step.estimate_s)} of {_fmt_s(left)} left")
        began = clock()
        try:
            runner(step)
        except Exception as exc:  # one failed step must not cost the window's other steps
            outcome[step.name] = f"failed: {' '.join(str(exc).split())}"
        else:
            outcome[step.name] = "done" if state(step) == "recorded" else f"failed: no record at {step.record}"
        log(f"[{outcome[step.name]}] {step.name} after {_fmt_s(clock() - began)} "
            f"(estimate {_fmt_s(step.estimate_s)})")
    return outcome


def subprocess_runner(args: argparse.Namespace) -> Runner:
    """Each step in a fresh ``python gpu_plan.py --step NAME`` process; its output goes straight through."""
    def run(step: Step) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--budget-s", "0", "--results", str(args.results),
               "--scratch", str(args.scratch), "--step", step.name]
        if args.data_dir:
            cmd += ["--data-dir", str(args.data_dir)]
        sys.stdout.flush()  # the plan's lines first, then the step's own output
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"exit code {done.returncode} (its output is above)")

    return run


# --------------------------------------------------------------------------------------------- the steps
def copy_record(run_dir: Path, dest: Path) -> None:
    """Copy a finished run's ``config.json``, ``metrics.jsonl`` and ``results.json`` (nothing else) to ``dest``;
    ``results.json`` last, so a record with results is always whole."""
    for name in RECORD_FILES:
        if not (run_dir / name).is_file():
            raise RuntimeError(f"{run_dir / name} is missing: the run did not finish")
    for name in RECORD_FILES:
        content = (run_dir / name).read_bytes()
        atomic_write(dest / name, lambda fh, content=content: fh.write(content), binary=True)


def train_row(config: RunConfig) -> None:
    """Train (or resume) ``config`` in ``config.out``; a scratch run of another config is removed first."""
    from aacn.experiments.reproduce import train_or_resume

    scratch = Path(config.out)
    if (scratch / "config.json").is_file():
        try:
            stale = bool(config.differences(RunConfig.load(scratch / "config.json")))
        except UserError:
            stale = True
        if stale:
            shutil.rmtree(scratch)
    train_or_resume(config)


def perform_row(step: Step, train: Callable[[RunConfig], None] = train_row) -> None:
    train(step.config)
    copy_record(Path(step.config.out), step.record.parent)


def _load_benchmark(name: str) -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    import importlib

    return importlib.import_module(name)


def cuda_check_record(path: Path) -> None:
    """``benchmarks/cuda_check.py``'s comparisons as JSON (an implementation that raises is recorded so)."""
    check = _load_benchmark("cuda_check")
    rows = []
    for shape in check.SHAPES:
        for dtype, tol in check.TOLERANCES.items():
            for impl in check.CUDA_IMPLS:
                row: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype)[6:], "impl": impl, "tolerance": tol}
                try:
                    errors = check.relative_errors(shape, dtype, impl)
                except Exception as exc:  # recorded, and the other cases still run
                    row.update(ok=False, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                else:
                    row.update(ok=all(e < tol for e in errors), output_error=errors[0], grad_errors=errors[1:])
                rows.append(row)
                print(f"{'OK  ' if row['ok'] else 'FAIL'} {shape} {row['dtype']} {impl}", flush=True)
    write_json(path, {"check": "cuda_check", "passed": all(r["ok"] for r in rows), "impls": list(check.CUDA_IMPLS),
                      "shape_key": "(B, Nh, H, W, dkh, dvh)", "rows": rows, "provenance": environment("cuda")})


def step_time_record(path: Path) -> None:
    """The plain WRN-28-10 and its paper-placement AA version per attention impl, in the compile modes of
    ``STEP_TIME["cases"]``, each in a fresh process of ``benchmarks/models.py``; step times and peak memory with their
    ratios to the plain network in the same mode (``*_ratio``) and to the same model eager (``step_s_vs_eager``)."""
    models = _load_benchmark("models")
    from aacn.nn.triton_attention import HAS_TRITON

    rows = []
    for mode, impls in STEP_TIME["cases"].items():
        for impl in impls:
            if impl == "triton" and not HAS_TRITON:
                continue
            kwargs = {} if impl is None else {"attention": "paper", "attention_impl": impl}
            cfg = {"model": STEP_TIME["model"], "model_kwargs": kwargs, "batch": STEP_TIME["batch"],
                   "steps": STEP_TIME["steps"], "warmup": STEP_TIME["warmup"], "device": STEP_TIME["device"],
                   "amp": STEP_TIME["amp"], "channels_last": STEP_TIME["channels_last"], "threads": None,
                   "compile_mode": mode}
            print(f"step time: {STEP_TIME['model']} {'plain' if impl is None else 'paper ' + impl} "
                  f"{mode or 'eager'}", flush=True)
            result = models.run_case(cfg)
            result.pop("step_s_each", None)
            rows.append({"attention": "none" if impl is None else "paper", "attention_impl": impl,
                         "compile_mode": mode, **result})
    for row in rows:
        plain = next(r for r in rows if r["attention_impl"] is None and r["compile_mode"] == row["compile_mode"])
        eager = next(r for r in rows if r["attention_impl"] == row["attention_impl"] and r["compile_mode"] is None)
        for key in ("step_s", "peak_bytes"):
            if key in row and key in plain:
                row[f"{key}_ratio"] = row[key] / plain[key]
        if "step_s" in row and "step_s" in eager:
            row["step_s_vs_eager"] = row["step_s"] / eager["step_s"]
    write_json(path, {"check": "aa_step_time", "settings": STEP_TIME, "rows": rows,
                      "provenance": environment(STEP_TIME["device"])})


def perform(step: Step, data_dir: str | None) -> None:
    """Run one step in this process and write its records."""
    if step.kind == "cuda_check":
        cuda_check_record(step.record)
    elif step.kind == "aa_step_time":
        step_time_record(step.record)
    elif step.kind == "anchor":
        from aacn.experiments.anchor import run_anchor

        run_anchor(step.anchor, data_dir=data_dir, out=step.record.parent, seed=0, device="cuda")
    else:
        perform_row(step)


# ------------------------------------------------------------------------------------------------- main
def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def main(argv: list[str] | None = None, *, runner: Runner | None = None,
         log: Callable[[str], Any] = print) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=_budget, required=True, help="seconds of GPU time this window has")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py and cifar-100-python")
    p.add_argument("--results", default="results", help="where the records go (default results)")
    p.add_argument("--scratch", default="runs/gpu_plan", help="run folders of the rows (default runs/gpu_plan)")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.add_argument("--step", help=argparse.SUPPRESS)  # run one step in this process (what each step's process does)
    args = p.parse_args(argv)
    plan = build_plan(args.results, data_dir=args.data_dir, scratch=args.scratch)
    if args.step is not None:
        step = next((s for s in plan if s.name == args.step), None)
        if step is None:
            p.error(f"no step {args.step!r} in the plan")
        try:
            perform(step, args.data_dir)
        except UserError as exc:
            p.exit(2, f"{step.name}: {exc}\n")
        return {step.name: "done"}
    print_plan(plan, args.budget_s, log)
    if args.dry_run:
        return {}
    if runner is None:
        if not torch.cuda.is_available():
            p.exit(2, "gpu_plan.py: no CUDA GPU is available; its steps need one (--dry-run prints the plan)\n")
        runner = subprocess_runner(args)
    log("")
    outcome = execute(plan, args.budget_s, runner, log=log)
    done = sum(v == "done" for v in outcome.values())
    later = sum(v == "later" for v in outcome.values())
    failed = [k for k, v in outcome.items() if v.startswith("failed")]
    log(f"\n{done} step(s) done, {later} left for a later window" + (f", failed: {', '.join(failed)}" if failed
                                                                      else ""))
    return outcome


if __name__ == "__main__":
    sys.exit(1 if any(v.startswith("failed") for v in main().values()) else 0)
