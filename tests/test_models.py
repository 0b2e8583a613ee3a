"""Plain ResNet-34 / WRN-D-K: parameter counts, shapes, structure and argument checking."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aacn.models import create_model, list_models


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def wrn_reference_count(depth: int, k: int, num_classes: int = 10, base: int = 16) -> int:
    """Independent closed-form count of a pre-activation WRN-D-K (bias-free convs, affine BN, fc + bias)."""
    n = (depth - 4) // 6
    total = 3 * 9 * base  # stem conv
    c_in = base
    for g in range(3):
        c = base * k * 2**g
        for i in range(n):
            cin = c_in if i == 0 else c
            total += 2 * cin  # bn1
            total += 9 * cin * c + 2 * c + 9 * c * c  # conv1, bn2, conv2
            if cin != c or (g > 0 and i == 0):
                total += cin * c  # 1x1 shortcut
        c_in = c
    return total + 2 * c_in + c_in * num_classes + num_classes  # final bn + fc


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet34", {}, 21_282_122),
        ("resnet34", {"stem": "cifar"}, 21_282_122),
        ("resnet34", {"stem": "imagenet"}, 21_289_802),
        ("wrn-28-10", {}, 36_479_194),
        ("wrn-16-4", {}, 2_748_890),
        ("wrn-16-8", {}, 10_961_370),
        ("wrn-40-4", {}, 8_949_210),
    ],
)
def test_parameter_counts(name: str, kwargs: dict, expected: int) -> None:
    assert n_params(create_model(name, num_classes=10, **kwargs)) == expected


@pytest.mark.parametrize(("depth", "k"), [(10, 1), (16, 4), (22, 2), (28, 10), (40, 4)])
def test_wrn_counts_match_closed_form(depth: int, k: int) -> None:
    assert n_params(create_model(f"wrn-{depth}-{k}")) == wrn_reference_count(depth, k)
    assert n_params(create_model(f"wrn-{depth}-{k}", num_classes=100, base_width=8)) == wrn_reference_count(
        depth, k, 100, 8
    )


def test_cifar100_head() -> None:
    assert n_params(create_model("resnet34", num_classes=100)) == 21_282_122 + 512 * 90 + 90
    assert create_model("wrn-28-10", num_classes=100).fc.out_features == 100


def test_list_models_and_case() -> None:
    assert list_models() == ["resnet34", "wrn-D-K"]
    assert n_params(create_model(" WRN-16-4 ")) == 2_748_890


@pytest.mark.parametrize(
    ("name", "kwargs", "out_hw"),
    [
        ("resnet34", {"base_width": 4}, 4),
        ("resnet34", {"base_width": 4, "stem": "imagenet"}, 1),
        ("wrn-16-2", {"base_width": 4}, 8),
        ("wrn-10-1", {"base_width": 2, "dropout": 0.3}, 8),
    ],
)
def test_forward_shapes(name: str, kwargs: dict, out_hw: int) -> None:
    model = create_model(name, num_classes=7, **kwargs)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, out_hw, out_hw)
    assert model.fc.in_features == model.num_features
    assert model.attention_layers == []


def test_widths_follow_base_width() -> None:
    r = create_model("resnet34", base_width=8)
    assert [getattr(r, f"layer{s}")[0].conv1.out_channels for s in range(1, 5)] == [8, 16, 32, 64]
    w = create_model("wrn-16-3", base_width=4)
    assert w.conv1.out_channels == 4
    assert [getattr(w, f"block{g}")[0].conv1.out_channels for g in range(1, 4)] == [12, 24, 48]


def test_resnet_structure() -> None:
    model = create_model("resnet34", base_width=4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert len(convs) == 1 + 2 * 16 + 3  # stem, two per block, three projections
    blocks_per_stage = {1: 3, 2: 4, 3: 6, 4: 3}
    assert model.block_names == [f"layer{s}.{i}" for s, n in blocks_per_stage.items() for i in range(n)]
    for name in model.block_names:
        block = model.get_submodule(name)
        projects = block.conv1.stride == (2, 2) or block.conv1.in_channels != block.conv1.out_channels
        assert isinstance(block.shortcut, nn.Sequential) == projects
    assert model.get_submodule("layer2.0").shortcut[0].kernel_size == (1, 1)


def test_wrn_structure_and_block_names() -> None:
    model = create_model("wrn-28-10", base_width=2)
    assert model.block_names == [f"block{g}.{i}" for g in (1, 2, 3) for i in range(4)]
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    with_shortcut = [n for n in model.block_names if model.get_submodule(n).shortcut is not None]
    assert with_shortcut == ["block1.0", "block2.0", "block3.0"]


def test_kaiming_init() -> None:
    torch.manual_seed(0)
    conv = create_model("wrn-28-10").block3[1].conv2  # 640 -> 640, 3x3
    expected_std = math.sqrt(2.0 / (640 * 9))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    bn = create_model("resnet34", base_width=4).layer1[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = create_model("wrn-10-1", base_width=4, dropout=0.5)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("name", "kwargs", "fragment"),
    [
        ("resnet50", {}, "unknown model 'resnet50'"),
        ("wrn-27-10", {}, "bad WRN name"),
        ("wrn-4-2", {}, "bad WRN name"),
        ("wrn-28-0", {}, "bad WRN name"),
        ("resnet34", {"widht": 3}, "unknown argument(s) ['widht']"),
        ("resnet34", {"dropout": 0.3}, "unknown argument(s) ['dropout']"),
        ("wrn-28-10", {"stem": "cifar"}, "unknown argument(s) ['stem']"),
        ("resnet34", {"stem": "tiny"}, "stem must be one of"),
        ("resnet34", {"base_width": 0}, "base_width must be a positive integer"),
        ("resnet34", {"base_width": 2.5}, "base_width must be a positive integer"),
        ("resnet34", {"input_size": 0}, "input_size must be a positive integer"),
        ("wrn-16-4", {"dropout": 1.0}, "dropout must be a probability"),
        ("resnet34", {"attention": "everywhere"}, "unknown placement or block 'everywhere'"),
        ("resnet34", {"kappa": 0}, "kappa must be a fraction in (0, 1]"),
    ],
)
def test_bad_input(name: str, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        create_model(name, num_classes=10, **({"base_width": 2} | kwargs))  # narrow: fast
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_num_classes_and_name_type() -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model("resnet34", num_classes=0)
    with pytest.raises(ValueError, match="model name must be a string"):
        create_model(34)  # type: ignore[arg-type]


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"\['resnet34', 'wrn-D-K'\]"):
        create_model("vgg16")
