"""Where a training step's time goes: wall time, GPU kernel time and the top kernels (torch.profiler).

Builds each model (default: WRN-28-10 plain and with the paper placement), runs its training step (SGD,
autocast bf16 on CUDA, channels-last) on synthetic data, times 10 steps, then profiles 3 and prints the ops
with the most GPU (or CPU) time. When wall time is well above GPU time, the step is bound by the CPU
launching kernels, not by the GPU.

    python benchmarks/profile_step.py --device cuda
    python benchmarks/profile_step.py --device cuda --models wrn-28-10 --attention paper --batch 256
    python benchmarks/profile_step.py --device cuda --attention none paper --impls auto triton
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from aacn.models import create_model
from aacn.nn.functional import IMPLS


def profile_model(name: str, attention: str, impl: str, batch: int, device: torch.device, rows: int) -> None:
    kwargs = {} if attention == "none" else {"attention": attention, "attention_impl": impl}
    cuda = device.type == "cuda"
    model = create_model(name, num_classes=10, **kwargs).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    x = x.to(memory_format=torch.channels_last) if cuda else x
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3 if cuda else 1):
        step()
    sync()
    steps = 10 if cuda else 2
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    wall = (time.perf_counter() - start) / steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync()
    table = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    gpu = sum(e.self_device_time_total for e in table if e.device_type == torch.autograd.DeviceType.CUDA)
    gpu_note = f", GPU kernel time {gpu / 3 / 1e3:.1f} ms/step" if cuda else ""
    impl_note = "" if attention == "none" else f" ({impl})"
    print(f"\n== {name}, attention {attention}{impl_note}, batch {batch}: wall {wall:.1f} ms/step{gpu_note}")
    print(table.table(sort_by=sort, row_limit=rows, max_name_column_width=60))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["wrn-28-10"])
    p.add_argument("--attention", nargs="+", default=["none", "paper"], help="placements to profile")
    p.add_argument("--impls", nargs="+", default=["auto"], choices=IMPLS, help="attention impls to profile")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=18, help="ops to list per model")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    for name in args.models:
        for attention in args.attention:
            for impl in args.impls if attention != "none" else ["auto"]:
                profile_model(name, attention, impl, args.batch, torch.device(args.device), args.rows)


if __name__ == "__main__":
    main()
