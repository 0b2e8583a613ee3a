"""Running airbench's CUDA/fp16 code on the CPU in float32: what the context changes, and that it restores it."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch
from torch import nn

from aacn.experiments import airbench_cpu
from aacn.experiments.airbench_cpu import TORCHVISION_STAND_IN, cpu_float32


def test_inside_the_context_half_and_cuda_mean_cpu_float32_and_everything_is_restored(tmp_path):
    net = nn.Linear(3, 2)
    originals = (torch.Tensor.half, torch.Tensor.cuda, nn.Module.half, nn.Module.cuda, torch.load,
                 torch.cuda.Event, torch.cuda.synchronize)
    path = tmp_path / "t.pt"
    torch.save({"images": torch.arange(6, dtype=torch.uint8)}, path)
    module = types.ModuleType("fake_airbench_utils")
    module.torch = torch
    with cpu_float32(module):
        assert torch.ones(2).half().dtype == torch.float32 and torch.ones(2).cuda().device.type == "cpu"
        assert net.half().cuda() is net and net.weight.dtype == torch.float32
        loaded = torch.load(path, map_location=module.torch.device(0))  # airbench's CifarLoader(gpu=0)
        assert loaded["images"].device.type == "cpu"
        assert module.torch.zeros(1).dtype == torch.float32  # everything else is torch itself
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        time.sleep(0.01)
        end.record()
        torch.cuda.synchronize()
        assert 5 <= start.elapsed_time(end) < 5_000  # milliseconds, as CUDA events give
    assert (torch.Tensor.half, torch.Tensor.cuda, nn.Module.half, nn.Module.cuda, torch.load, torch.cuda.Event,
            torch.cuda.synchronize) == originals
    assert module.torch is torch and torch.ones(1).half().dtype == torch.float16


def test_restored_after_an_exception():
    half = torch.Tensor.half
    with pytest.raises(RuntimeError, match="inside"):
        with cpu_float32():
            raise RuntimeError("inside")
    assert torch.Tensor.half is half


def test_the_torchvision_stand_in_normalizes_as_torchvision_does(monkeypatch):
    vision = airbench_cpu._stand_in_torchvision()
    assert vision.__version__ == TORCHVISION_STAND_IN
    x = torch.rand(4, 3, 5, 5)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    expected = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(vision.transforms.Normalize(mean, std)(x), expected)
    with pytest.raises(RuntimeError, match="cannot download"):
        vision.datasets.CIFAR10("x", download=True)


def test_import_airbench_installs_the_stand_in_only_where_torchvision_does_not_load(monkeypatch):
    for name in ("torchvision.transforms", "torchvision.datasets"):
        monkeypatch.setitem(sys.modules, name, None)  # restored (to absent) after the test
    fake = types.ModuleType("airbench")
    fake.utils = types.ModuleType("airbench.utils")
    monkeypatch.setitem(sys.modules, "airbench", fake)
    monkeypatch.setitem(sys.modules, "airbench.utils", fake.utils)
    broken = types.ModuleType("torchvision")

    def fail(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    broken.__getattr__ = fail  # a torchvision built for another PyTorch fails like this
    monkeypatch.setitem(sys.modules, "torchvision", broken)
    module, version = airbench_cpu.import_airbench()
    assert module is fake and version == TORCHVISION_STAND_IN
    assert sys.modules["torchvision"].transforms.Normalize is not None

    working = types.ModuleType("torchvision")
    working.__version__ = "0.99"
    monkeypatch.setitem(sys.modules, "torchvision", working)
    assert airbench_cpu.import_airbench()[1] == "0.99"
