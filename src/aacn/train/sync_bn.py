"""Synchronised BatchNorm for ``--sync-bn``: batch statistics over the global batch, on any device.

On CUDA this is PyTorch's :class:`torch.nn.SyncBatchNorm` (fused kernels, NCCL). PyTorch's class refuses CPU
tensors (and DDP refuses CPU modules that contain it), so elsewhere — CPU with gloo — :class:`GlobalBatchNorm2d`
computes the same statistics with two differentiable all-reduces per layer: the per-channel sum (and the
sample count), then the centred sum of squares. Autograd carries the gradient back through both reductions,
so a DDP run with it trains on exactly the single-process batch statistics (up to float reduction order).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def all_reduce(tensor: Tensor) -> Tensor:
    """Differentiable all-reduce (sum) over the default process group."""
    return _AllReduceSum.apply(tensor)


def _synchronising(module: nn.Module) -> bool:
    return module.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are taken over all ranks' batches together.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``; in eval mode, or outside a process
    group of more than one rank, it *is* ``nn.BatchNorm2d``. Half-precision inputs get float32 statistics.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not _synchronising(self):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        dims = (0, 2, 3)
        local_count = x.new_tensor([float(x.numel() // x.shape[1])])
        sums = all_reduce(torch.cat([x.sum(dim=dims), local_count]))  # one message: sums and count
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dim=dims)) / count  # biased, as BN normalises with
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a synchronised one (PyTorch's on CUDA, else ours).

    Parameters and buffers are moved over, so call it before or after loading weights alike. Returns the
    converted module (``module`` itself unless it is a BatchNorm).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, device=device)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
