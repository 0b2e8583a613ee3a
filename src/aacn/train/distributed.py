"""Process group and device for one training process: single process, or one rank of a ``torchrun`` job.

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m aacn train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``; :func:`init` then joins the group with NCCL
on GPUs and gloo on CPU, and pins each rank to ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from aacn.config import device_name
from aacn.errors import UserError


@dataclass(frozen=True)
class Context:
    """Where this process runs and which rank it is."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → cuda (this rank's GPU), else mps, else cpu; explicit names are checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    problem = device_name(name)
    if problem:
        raise UserError(f"--device {problem}, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but this PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available here; use --device cpu")
    return device


def init(device_name: str = "auto") -> Context:
    """Join the torchrun process group if this process was launched by torchrun, else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return Context(device=device)
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise UserError(
                f"WORLD_SIZE={world_size} but {', '.join(missing)} is not set; launch with "
                "'torchrun --nproc-per-node N -m aacn train ...' (it sets the rendezvous)"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(minutes=30)
        try:
            dist.init_process_group(backend=backend, store=_restart_safe_store(world_size, timeout), rank=rank,
                                    world_size=world_size, timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"could not join the process group ({first}); check the rendezvous "
                "(--rdzv-endpoint / MASTER_ADDR:MASTER_PORT) and that all nodes can reach it"
            ) from None
    return Context(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def _restart_safe_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """A store for ``init_process_group`` that a restarted torchrun worker group cannot confuse with the last.

    torchrun's c10d rendezvous shares one TCPStore across ``--max-restarts`` restarts, and the process group
    keys its rendezvous (gloo/NCCL addresses, barrier counters) the same way every time, so a restarted rank can
    read a dead rank's address and fail or hang (pytorch/pytorch#135712). On one node the restart count is the
    same for every rank, so a per-restart key prefix isolates the groups. Across nodes it is not (each agent
    counts its own restarts): there we keep PyTorch's default and say how to avoid the problem. ``None`` means
    "let ``init_process_group`` use ``env://`` as usual".
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if os.environ.get("LOCAL_WORLD_SIZE") != str(world_size):
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and os.environ.get("RANK") == "0":
            print("aacn: warning: multi-node torchrun --max-restarts may fail to re-form the group after a "
                  "restart (pytorch/pytorch#135712); export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun",
                  file=sys.stderr)
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"aacn/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op when alone); returns it."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, ctx: Context) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), so evaluation agrees across ranks."""
    if ctx.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on this device (``auto``: bf16 on CUDA that supports it, else off)."""
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if amp == "fp16" and device.type == "cpu":
        raise UserError("--amp fp16 needs a GPU; on CPU use --amp bf16 or --amp none")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory since the last reset: allocated tensors on CUDA; the process's peak RSS elsewhere."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return 0
