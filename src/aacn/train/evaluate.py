"""Evaluation (loss, top-1, top-5 over a split, summed across ranks) and model cost (parameters, FLOPs).

Flip test-time augmentation (``tta=True``) scores each image by the mean of the logits of the image and of its
horizontal mirror, as airbench reports it; it is recorded apart from plain accuracy, never instead of it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from aacn.train.distributed import Context, all_reduce_sum


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict(model: nn.Module, images: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
    """``model``'s float32 logits for ``images``; with ``tta`` the mean of the logits of each image and of its
    horizontal mirror."""
    logits = model(images).float()
    if tta:
        logits = (logits + model(images.flip(-1)).float()) / 2
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, ctx: Context, amp_dtype: torch.dtype | None = None, *, tta: bool = False
) -> dict[str, float | None]:
    """Mean cross-entropy, top-1 and top-5 accuracy (percent) of ``model`` over every batch of ``loader``.

    ``tta``: score the mean of the logits of each image and of its horizontal mirror (see :func:`predict`).
    Each rank evaluates its slice of every batch; the sums are added across ranks, so every rank gets the
    result for the whole split. An empty split measures nothing: every value is ``None``.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, top1, top5, count
    for images, labels in loader.batches(0):
        with autocast(ctx.device, amp_dtype):
            logits = predict(model, images, tta=tta)
        logits = logits.float()
        sums[0] += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += labels.numel()
    all_reduce_sum(sums, ctx)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    if count == 0:
        return {"loss": None, "acc": None, "top5": None}
    return {"loss": loss / count, "acc": 100.0 * top1 / count, "top5": 100.0 * top5 / count}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops_per_image(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one image of ``image_shape`` ``(C, H, W)``, as counted by ``torch.utils.flop_counter``
    (a multiply-add is 2 FLOPs)."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *image_shape, device=param.device, dtype=param.dtype))
    model.train(was_training)
    return int(counter.get_total_flops())
