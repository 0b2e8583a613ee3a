"""The autograd rule shared by aacn's attention operators.

Every memory-efficient attention operator (``aacn::folded_flash_attention_cpu``,
``aacn::chunked_relative_attention``, ``aacn::triton_relative_attention``) has the same shape: it takes
``(q, k, v, rel_h, rel_w, *config)`` and returns ``(out, lse)``, the output and the log-sum-exp of each query's
logits. Its backward is another operator that takes ``(grad_out, q, k, v, rel_h, rel_w, out, lse, *config)`` and
recomputes the attention block by block from ``lse``, so only the inputs, the output and ``lse`` are saved:
nothing of size ``(HW)²``. :func:`register_lse_autograd` registers that rule once for all of them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["register_lse_autograd"]


def register_lse_autograd(op: Any, backward_op: Any, *, config_args: int | None = None,
                          pass_needed: bool = False) -> None:
    """Register ``backward_op`` as the gradient of ``op`` (both ``torch.library`` operators, see above).

    ``config_args``: how many of ``op``'s arguments after ``rel_w`` the backward takes (default: all of them).
    ``pass_needed``: ``backward_op`` also takes a last argument, the list of which of ``(q, k, v, rel_h, rel_w)``
    need a gradient, so that it can skip the others. Gradients of inputs that need none are returned as ``None``.
    """

    def setup_context(ctx, inputs, output) -> None:
        q, k, v, rel_h, rel_w, *config = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, rel_h, rel_w, out, lse)
        ctx.config, ctx.config_len = tuple(config[:config_args]), len(config)
        ctx.mark_non_differentiable(lse)

    def backward(ctx, grad_out, _grad_lse):
        q, k, v, rel_h, rel_w, out, lse = ctx.saved_tensors
        needed = list(ctx.needs_input_grad[:5])
        extra = (needed,) if pass_needed else ()
        grads = backward_op(grad_out, q, k, v, rel_h, rel_w, out, lse, *ctx.config, *extra)
        return (*(g if need else None for g, need in zip(grads, needed, strict=True)), *(None,) * ctx.config_len)

    op.register_autograd(backward, setup_context=setup_context)
