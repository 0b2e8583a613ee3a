"""How far CPU attention is from its exponential floor: exact softmax attention evaluates one exponential per
logit, ``B*Nh*(HW)^2`` in the forward and as many again in a backward that recomputes the probabilities (as
PyTorch's CPU flash attention and aacn's kernel both do).

Measured in one process, one thread, process-thread CPU time (steady where other jobs share the cores), best of
``--repeats`` interleaved rounds:

* the floor: ``torch.exp`` (SLEEF, vectorised) over a cache-resident float32 buffer, scaled to the shape's
  count of exponentials;
* plain ``F.scaled_dot_product_attention`` (no relative logits), forward and forward + backward;
* ``relative_attention_2d(..., impl="cpu")`` with both relative tables, on AAConv2d's channel-major layout.

Each is printed in ms and as a multiple of its floor (forward: one exponential per logit; forward + backward: two)::

    python benchmarks/exp_floor.py                       # B=8, Nh=8, dkh = dvh = 20, 16x16 and 32x32
    python benchmarks/exp_floor.py --batch 128 --heads 1 --dkh 6 --dvh 3 --sizes 32
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from aacn.nn.functional import relative_attention_2d


def _best(fns: dict, repeats: int) -> dict[str, float]:
    best = {name: float("inf") for name in fns}
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in fns.items():
            start = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - start)
    return best


def exp_seconds_per_element(repeats: int) -> float:
    """CPU seconds per float32 exponential of ``torch.exp`` on a 16 Ki-element (64 KiB) buffer."""
    x = -torch.rand(16384) * 20
    out = torch.empty_like(x)
    calls = 200

    def run():
        for _ in range(calls):
            torch.exp(x, out=out)

    return _best({"exp": run}, repeats)["exp"] / (calls * x.numel())


def time_size(s: int, b: int, nh: int, dkh: int, dvh: int, repeats: int) -> dict[str, float]:
    """Best CPU seconds of each attention call at an s x s grid."""
    gen = torch.Generator().manual_seed(0)
    # AAConv2d's layout: (B, Nh, d, H, W) storage seen as (B, Nh, H, W, d)
    q, k = (torch.randn(b, nh, dkh, s, s, generator=gen).requires_grad_() for _ in range(2))
    v = torch.randn(b, nh, dvh, s, s, generator=gen).requires_grad_()
    rel_h, rel_w = (torch.randn(2 * s - 1, dkh, generator=gen).requires_grad_() for _ in range(2))
    grad = torch.randn(b, nh, s, s, dvh, generator=gen)
    ql, kl, vl = (t.detach().permute(0, 1, 3, 4, 2).flatten(2, 3).contiguous().requires_grad_()
                  for t in (q, k, v))
    grad_l = grad.flatten(2, 3)

    def view(t):
        return t.permute(0, 1, 3, 4, 2)

    def plain_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(ql, kl, vl)

    def cpu_fwd():
        with torch.no_grad():
            relative_attention_2d(view(q), view(k), view(v), rel_h, rel_w, impl="cpu")

    fns = {
        "plain SDPA fwd": plain_fwd,
        "plain SDPA fwd+bwd": lambda: F.scaled_dot_product_attention(ql, kl, vl).backward(grad_l),
        "aacn cpu fwd": cpu_fwd,
        "aacn cpu fwd+bwd": lambda: relative_attention_2d(view(q), view(k), view(v), rel_h, rel_w,
                                                          impl="cpu").backward(grad),
    }
    return _best(fns, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dkh", type=int, default=20)
    parser.add_argument("--dvh", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    per_exp = exp_seconds_per_element(args.repeats)
    print(f"torch.exp: {1e-9 / per_exp:.2f} G exponentials/s (float32, 1 thread, {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()})")
    print(f"{'S':>3} {'what':>22} {'ms':>8} {'x floor':>8}")
    b, nh = args.batch, args.heads
    for s in args.sizes:
        best = time_size(s, b, nh, args.dkh, args.dvh, args.repeats)
        floor = b * nh * (s * s) ** 2 * per_exp
        print(f"{s:>3} {'exp floor (fwd)':>22} {1e3 * floor:8.2f} {1.0:8.2f}")
        for name, seconds in best.items():
            times = seconds / (2 * floor if "bwd" in name else floor)
            print(f"{s:>3} {name:>22} {1e3 * seconds:8.2f} {times:8.2f}")


if __name__ == "__main__":
    main()
