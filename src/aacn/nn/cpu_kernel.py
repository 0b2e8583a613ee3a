"""Relative attention as one C++ CPU kernel that adds the relative logits inside the attention loop (``impl="cpu"``).

The ``"sdpa"`` CPU path folds the relative terms into ``H + W`` extra query/key columns and pads q, k, v to one
head size for PyTorch's flash kernel (88 columns for dkh = 20 on a 32x32 grid), so most of its work is on the
folded and padding columns. Here, per (batch, head) pair with ``N = H*W`` positions, as in the Triton kernel
(:mod:`aacn.nn.triton_attention`):

* the kernel (``cpu_attention.cpp`` beside this file) takes the ``(2H-1, dkh)`` and ``(2W-1, dkh)`` embeddings
  themselves. Per query it computes the compact relative logits ``RH[i, x'] = q_i . r^H_(x'-x)`` (H values) and
  ``RW[i, y'] = q_i . r^W_(y'-y)`` (W values), vectorised over x' (y'), then the row of ``N`` logits from
  ``q . k`` plus ``RH`` broadcast over the key columns and ``RW`` over the key rows, its softmax and the weighted
  sum of the values; it saves only the output and the log-sum-exp;
* the backward recomputes each row's probabilities from the log-sum-exp and returns the gradients of q, k, v and
  of both embeddings: the row and column sums of each query's logit gradients give ``dRH[i, .]`` and
  ``dRW[i, .]``, which go straight on to q's gradient and to the embeddings' (summed per fixed group of
  (batch, head) pairs, then over the groups in order, so the result does not depend on the thread count).
  Per-thread scratch is a few rows of ``N`` values and one pair's ``(HW, H + W)`` relative-logit gradients:
  memory is ``O(B*Nh*HW*(dkh + dvh))``, nothing ``(HW)^2``-sized, no ``(B, Nh, HW, H + W)`` tables and no widened
  copies of q, k, v.

The kernel works on channel-major heads, ``(B*Nh, d, HW)``: the key index is contiguous, so its inner loops run
over keys with full SIMD vectors for any head size, which is what makes small heads (dkh of 3 to 26) fast; this
is also the layout :class:`~aacn.nn.aaconv.AAConv2d` produces, so no copy is needed there. Float32 and float64
run natively (float64 with SLEEF's correctly rounded-to-1-ulp exp, for exact comparisons), bfloat16 and float16
are computed in float32 and the output is returned in the input dtype. Parallel over (batch x head) pairs and
blocks of queries (forward) or pairs (backward; each pair's dK/dV is written by one thread, so the result does
not depend on the thread count).

Building: the source is compiled on first use with ``torch.utils.cpp_extension.load`` (a C++17 compiler and
ninja are needed; ``pip install ninja``), with ``-O3`` and the vector instruction set PyTorch's CPU dispatch
chose (``torch.backends.cpu.get_cpu_capability()``: AVX-512, AVX2 or none), into PyTorch's extension directory
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). The extension's name carries a hash of the
source, the flags and the torch version, so a build is reused by later processes and never mixed with another
version; torch's build lock serialises concurrent first builds. Where the build fails, ``impl="auto"`` falls back
to the previous CPU paths and warns once with the reason; ``impl="cpu"`` raises ``ValueError``.
``AACN_CPU_KERNEL=0`` keeps ``impl="auto"`` off this kernel (for comparisons); ``impl="cpu"`` still runs it.

Forward and backward are the operators ``aacn::relative_attention_cpu`` and ``..._backward`` (custom ops with
fake implementations and the autograd rule of :mod:`aacn.nn.lse_autograd`), so ``torch.compile(fullgraph=True)``
and ``torch.export`` keep them whole.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from aacn.nn.lse_autograd import register_lse_autograd
from aacn.nn.relative_attention import compute_dtype, softmax_dtype

__all__ = [
    "cpu_attention", "cpu_kernel_builds", "cpu_kernel_for_auto", "cpu_kernel_unavailable_reason", "load_cpu_kernel",
]

SOURCE = Path(__file__).with_name("cpu_attention.cpp")
ENV_SWITCH = "AACN_CPU_KERNEL"

_lock = threading.Lock()
_module = None
_failure: str | None = None
_warned = False


def _build_flags() -> tuple[str, list[str]]:
    """(capability, compiler flags): the instruction set PyTorch's own CPU kernels use on this machine."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast"]
    if capability == "AVX512":
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mavx2", "-mf16c",
                  "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    elif capability == "AVX2":
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    else:
        capability = "DEFAULT"
        flags += ["-DCPU_CAPABILITY=DEFAULT"]
    return capability, flags


def load_cpu_kernel():
    """The compiled extension module (built on the first call, then cached), or None where it cannot be built;
    :func:`cpu_kernel_unavailable_reason` then says why."""
    global _module, _failure
    if _module is not None or _failure is not None:
        return _module
    with _lock:
        if _module is not None or _failure is not None:
            return _module
        try:
            from torch.utils import cpp_extension

            capability, flags = _build_flags()
            digest = hashlib.sha1(SOURCE.read_bytes())
            digest.update(" ".join([torch.__version__, *flags]).encode())
            name = f"aacn_cpu_attention_{capability.lower()}_{digest.hexdigest()[:12]}"
            _module = cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags,
                                         extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler, no ninja, a build error: report, fall back
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            _failure = f"{type(exc).__name__}: {lines[-1] if lines else 'unknown error'}"
    return _module


@torch.compiler.assume_constant_result
def cpu_kernel_builds() -> bool:
    """Whether the C++ kernel runs here (built on the first call). Evaluated eagerly, also while ``torch.compile``
    traces."""
    return load_cpu_kernel() is not None


def cpu_kernel_unavailable_reason() -> str | None:
    """Why the C++ kernel cannot run here, as a phrase (None when it can); builds it on the first call."""
    if not cpu_kernel_builds():
        return (f"could not build the C++ CPU kernel ({_failure}); it needs a C++17 compiler and ninja "
                f"(pip install ninja); see aacn.nn.cpu_kernel")
    return None


@torch.compiler.assume_constant_result
def cpu_kernel_for_auto() -> bool:
    """Whether ``impl="auto"`` uses the C++ kernel on CPU: not with ``AACN_CPU_KERNEL=0``, otherwise when it
    builds (a failed build warns once, with the reason). Evaluated eagerly, also while ``torch.compile`` traces."""
    global _warned
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if cpu_kernel_builds():
        return True
    if not _warned:
        _warned = True
        warnings.warn(f"aacn: impl='auto' uses the slower CPU paths: {cpu_kernel_unavailable_reason()}",
                      RuntimeWarning, stacklevel=2)
    return False


# ---------------------------------------------------------------------------------------------- operators


def _kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, Nh, a, b) -> contiguous (B*Nh, a, b) in ``dtype``."""
    return None if t is None else t.to(dtype).reshape(-1, t.shape[-2], t.shape[-1]).contiguous()


def _table(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """An embedding table as a contiguous tensor in ``dtype``."""
    return None if t is None else t.to(dtype).contiguous()


@torch.library.custom_op("aacn::relative_attention_cpu", mutates_args=())
def relative_attention_cpu(
    q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, scale: float, h: int, w: int
) -> tuple[Tensor, Tensor]:
    """Forward on channel-major heads: q, k (B, Nh, dkh, HW), v (B, Nh, dvh, HW), the relative embeddings
    ``rel_h`` (2h-1, dkh) and ``rel_w`` (2w-1, dkh) (or None; any float dtype, converted to the kernel's). Returns the
    (B, Nh, dvh, HW) output in q's dtype and the (B, Nh, HW) log-sum-exp of the scaled logits (float32; float64
    for float64). Any strides."""
    kd = _kernel_dtype(q.dtype)
    b, nh, _, n = q.shape
    out, lse = load_cpu_kernel().forward(*(_flat(t, kd) for t in (q, k, v)), _table(rel_h, kd), _table(rel_w, kd),
                                         scale, h, w)
    return out.view(b, nh, -1, n).to(q.dtype), lse.view(b, nh, n)


@relative_attention_cpu.register_fake
def _(q, k, v, rel_h, rel_w, scale, h, w):
    b, nh, _, n = q.shape
    return q.new_empty((b, nh, v.shape[2], n)), q.new_empty((b, nh, n), dtype=softmax_dtype(q.dtype))


@torch.library.custom_op("aacn::relative_attention_cpu_backward", mutates_args=())
def relative_attention_cpu_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, out: Tensor,
    lse: Tensor, scale: float, h: int, w: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, k, v, ``rel_h``, ``rel_w`` (contiguous, in their dtypes; an empty tensor for an absent
    table), recomputing the probabilities from the saved log-sum-exp."""
    kd = _kernel_dtype(q.dtype)
    flat = [_flat(t, kd) for t in (grad_out, q, k, v)]
    grads = load_cpu_kernel().backward(*flat, _table(rel_h, kd), _table(rel_w, kd), _flat(out, kd),
                                       _flat(lse.unsqueeze(-1), kd), scale, h, w)
    result = [g.view(t.shape).to(t.dtype) for g, t in zip(grads[:3], (q, k, v), strict=True)]
    for g, t in zip(grads[3:], (rel_h, rel_w), strict=True):
        result.append(g.view(t.shape).to(t.dtype) if t is not None else q.new_empty(0))
    return tuple(result)


@relative_attention_cpu_backward.register_fake
def _(grad_out, q, k, v, rel_h, rel_w, out, lse, scale, h, w):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) if t is not None else q.new_empty(0)
                 for t in (q, k, v, rel_h, rel_w))


register_lse_autograd(relative_attention_cpu, relative_attention_cpu_backward)


def cpu_attention(q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor | None, rel_w: Tensor | None, scale: float) -> Tensor:
    """Exact attention through the C++ kernel; returns (B, Nh, H, W, dvh) in the compute dtype.

    Inputs as in :func:`aacn.nn.functional.relative_attention_2d` (already validated), on the CPU. Runs in the
    autocast dtype under autocast; raises ``ValueError`` where the kernel cannot be built. The result is a view
    of a (B, Nh, dvh, H, W) tensor, so ``permute(0, 1, 4, 2, 3)`` of it is contiguous.
    """
    if q.device.type != "cpu":
        raise ValueError(f"impl='cpu' runs on CPU tensors only, not {q.device.type}; use impl='auto'")
    if not cpu_kernel_builds():
        raise ValueError(f"impl='cpu' {cpu_kernel_unavailable_reason()}; use impl='auto'")
    dtype = compute_dtype(q, k, v)
    b, nh, h, w, _ = q.shape
    dvh = v.shape[-1]
    with torch.autocast("cpu", enabled=False):
        # channel-major heads (B, Nh, d, HW): a view of AAConv2d's (B, Nh, d, H, W) projections
        qt, kt, vt = (t.to(dtype).permute(0, 1, 4, 2, 3).reshape(b, nh, t.shape[-1], h * w) for t in (q, k, v))
        rd = softmax_dtype(dtype)  # relative logits in float32 (float64) also for 16-bit inputs
        rh, rw = (t.to(rd) if t is not None else None for t in (rel_h, rel_w))
        out, _ = relative_attention_cpu(qt, kt, vt, rh, rw, float(scale), h, w)
    return out.view(b, nh, dvh, h, w).permute(0, 1, 3, 4, 2)
