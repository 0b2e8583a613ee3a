"""Run airbench's own, unchanged code on a CPU in float32.

airbench is written for one CUDA GPU in fp16: it calls ``.half().cuda()`` on its network and images, maps its
cached data to ``cuda:0`` with ``torch.load``, and times itself with ``torch.cuda.Event``. :func:`cpu_float32`
is a context manager that, for the code run inside it, makes exactly those calls mean their CPU float32
equivalents:

- ``Tensor.half()`` and ``Module.half()`` -> ``.float()``; ``Tensor.cuda()`` and ``Module.cuda()`` -> no move;
- ``torch.load(..., map_location=<a CUDA device>)`` -> ``map_location="cpu"``, and ``torch.device(0)`` inside
  the modules given (airbench's ``utils`` names its GPU by index) -> the CPU;
- ``torch.cuda.Event(enable_timing=True)`` -> a wall-clock event with the same ``record`` / ``elapsed_time``
  (milliseconds); ``torch.cuda.synchronize()`` -> nothing to wait for.

Everything else (network, data order and augmentation, optimiser, schedule, lookahead, TTA) is airbench's own
code. Inside the context any ``.half()`` gives float32, so it must wrap only the airbench call; the originals
are restored on exit, also after an exception.

airbench imports ``torchvision`` at module level and uses only ``torchvision.transforms.Normalize`` from it once
its data cache exists (aacn writes that cache). A CPU build of PyTorch often has no matching torchvision:
:func:`import_airbench` then installs :data:`TORCHVISION_STAND_IN`, a module whose ``transforms.Normalize``
computes ``(x - mean) / std`` per channel as torchvision's does, and whose ``datasets`` refuse to download.
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["cpu_float32", "import_airbench", "TORCHVISION_STAND_IN"]

TORCHVISION_STAND_IN = "aacn stand-in (transforms.Normalize only)"


class _WallClockEvent:
    """``torch.cuda.Event`` for CPU code: ``record()`` notes the time, ``elapsed_time(end)`` is in milliseconds."""

    def __init__(self, enable_timing: bool = False, **_: Any) -> None:
        self.time: float | None = None

    def record(self, *_: Any) -> None:
        self.time = time.perf_counter()

    def elapsed_time(self, end: _WallClockEvent) -> float:
        if self.time is None or end.time is None:
            raise RuntimeError("elapsed_time needs both events recorded")
        return 1e3 * (end.time - self.time)

    def synchronize(self) -> None:
        return None


def _to_cpu_location(location: Any) -> Any:
    """``"cpu"`` for a GPU index, a ``"cuda..."`` string or a CUDA device; any other location unchanged."""
    cuda = (isinstance(location, int) or (isinstance(location, str) and location.startswith("cuda"))
            or (isinstance(location, torch.device) and location.type == "cuda"))
    return "cpu" if cuda else location


class _CpuDeviceTorch(types.ModuleType):
    """``torch`` as one module sees it, except that ``torch.device(<int>)`` is the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def device(*args: Any, **kwargs: Any) -> torch.device:
        if len(args) == 1 and isinstance(args[0], int) and not kwargs:
            return torch.device("cpu")
        return torch.device(*args, **kwargs)


@contextlib.contextmanager
def cpu_float32(*modules: types.ModuleType) -> Iterator[None]:
    """Within the block, airbench's CUDA/fp16 calls run on the CPU in float32 (see the module doc); ``modules``
    (e.g. ``airbench.utils``) also see ``torch.device(<int>)`` as the CPU."""
    load = torch.load

    def cpu_load(*args: Any, **kwargs: Any) -> Any:
        if "map_location" in kwargs:
            kwargs["map_location"] = _to_cpu_location(kwargs["map_location"])
        return load(*args, **kwargs)

    patches = [
        (torch.Tensor, "half", lambda self, *a, **k: self.float()),
        (torch.Tensor, "cuda", lambda self, *a, **k: self),
        (nn.Module, "half", lambda self: self.float()),
        (nn.Module, "cuda", lambda self, *a, **k: self),
        (torch, "load", cpu_load),
        (torch.cuda, "Event", _WallClockEvent),
        (torch.cuda, "synchronize", lambda *a, **k: None),
        *((module, "torch", _CpuDeviceTorch()) for module in modules if getattr(module, "torch", None) is torch),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _stand_in_torchvision() -> types.ModuleType:
    """A ``torchvision`` with ``transforms.Normalize`` (as torchvision computes it on a tensor) and nothing else."""

    class Normalize:
        def __init__(self, mean: Any, std: Any) -> None:
            self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            mean = self.mean.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
            std = self.std.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
            return (x - mean) / std

    class _NoDownload:
        def __init__(self, *_: Any, **__: Any) -> None:
            raise RuntimeError("the aacn torchvision stand-in cannot download data; aacn writes airbench's cache")

    vision = types.ModuleType("torchvision")
    vision.__version__ = TORCHVISION_STAND_IN
    vision.transforms = types.ModuleType("torchvision.transforms")
    vision.transforms.Normalize = Normalize
    vision.datasets = types.ModuleType("torchvision.datasets")
    vision.datasets.CIFAR10 = _NoDownload
    return vision


def import_airbench() -> tuple[Any, str]:
    """Import airbench (and ``airbench.utils``); returns the module and the torchvision it runs with: the
    installed version, or :data:`TORCHVISION_STAND_IN` where torchvision is missing or does not load with this
    PyTorch build. Raises ``ImportError`` if airbench itself does not import."""
    try:
        import torchvision

        torchvision_version = str(torchvision.__version__)
    except Exception:  # missing, or built for another PyTorch (its operators fail to register)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        vision = _stand_in_torchvision()
        sys.modules.update({"torchvision": vision, "torchvision.transforms": vision.transforms,
                            "torchvision.datasets": vision.datasets})
        torchvision_version = TORCHVISION_STAND_IN
    import airbench
    import airbench.utils

    return airbench, torchvision_version
