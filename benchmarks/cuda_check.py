"""Correctness of every attention implementation on CUDA against the float64 CPU reference.

For a few shapes (the paper's 32x32 grid included), runs ``relative_attention_2d`` forward + backward on the GPU
in float32 and bfloat16 with each ``impl`` (``triton`` where the triton package is installed) and prints the
relative error ``|out - ref| / |ref|`` of the output and of the five gradients (q, k, v, rel_h, rel_w).
Tolerances: 1e-3 (float32), 3e-2 (bfloat16). Exit code 1 if any check fails. Needs a CUDA device; the CPU
paths are covered by the test suite.

    python benchmarks/cuda_check.py
"""

from __future__ import annotations

import sys

import torch

from aacn.nn.functional import relative_attention_2d
from aacn.nn.triton_attention import HAS_TRITON

SHAPES = [(2, 8, 8, 8, 20, 20), (2, 4, 16, 12, 24, 16), (1, 8, 32, 32, 20, 20), (2, 2, 7, 5, 8, 12),
          (2, 8, 32, 32, 20, 2)]
CUDA_IMPLS = ("auto", "sdpa", "chunked", "reference") + (("triton",) if HAS_TRITON else ())
TOLERANCES = {torch.float32: 1e-3, torch.bfloat16: 3e-2}


def relative_errors(shape: tuple[int, ...], dtype: torch.dtype, impl: str) -> list[float]:
    b, nh, h, w, dk, dv = shape
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(b, nh, h, w, dk, dtype=torch.float64, generator=gen) for _ in range(2))
    v = torch.randn(b, nh, h, w, dv, dtype=torch.float64, generator=gen)
    rel_h = torch.randn(2 * h - 1, dk, dtype=torch.float64, generator=gen)
    rel_w = torch.randn(2 * w - 1, dk, dtype=torch.float64, generator=gen)
    grad = torch.randn(b, nh, h, w, dv, dtype=torch.float64, generator=gen)
    ref_inputs = [t.clone().requires_grad_() for t in (q, k, v, rel_h, rel_w)]
    ref = relative_attention_2d(*ref_inputs, impl="reference")
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad)
    inputs = [t.to("cuda", dtype).requires_grad_() for t in (q, k, v, rel_h, rel_w)]
    out = relative_attention_2d(*inputs, impl=impl)
    grads = torch.autograd.grad(out, inputs, grad.to("cuda", dtype))
    pairs = [(out, ref), *zip(grads, ref_grads, strict=True)]
    return [((a.double().cpu() - r).norm() / r.norm()).item() for a, r in pairs]


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_check.py needs a CUDA device", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    failed = 0
    for shape in SHAPES:
        for dtype, tol in TOLERANCES.items():
            for impl in CUDA_IMPLS:
                errs = relative_errors(shape, dtype, impl)
                ok = all(e < tol for e in errs)
                failed += not ok
                print(f"{'OK  ' if ok else 'FAIL'} (B,Nh,H,W,dkh,dvh)={shape} {str(dtype)[6:]:8s} {impl:9s} "
                      f"out {errs[0]:.1e}  grads " + " ".join(f"{e:.1e}" for e in errs[1:]))
    print("all passed" if not failed else f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
