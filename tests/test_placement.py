"""Attention placement: which convs each placement augments, their depths, and the augmented models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aacn.cli import main
from aacn.config import RunConfig
from aacn.errors import OptionError
from aacn.experiments.presets import TABLE2_PLACEMENTS
from aacn.models import PLACEMENTS, Rule, apply_attention, attention_depths, create_model, resolve_placement
from aacn.models.config import ModelConfig

PAPER_RESNET34 = [f"layer{s}.{i}.conv1" for s, n in ((2, 4), (3, 6), (4, 3)) for i in range(n)]
PAPER_WRN28 = [f"block{g}.{i}.conv1" for g in (1, 2, 3) for i in range(4)]
TINY = {"num_heads": 2, "min_key_depth_per_head": 2}  # narrow models need few, small heads


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- pure logic: depths and names


@pytest.mark.parametrize(
    ("f_out", "kwargs", "expected"),
    [
        (160, {}, (160, 16)),  # WRN-28-10 group 1: dk from the 20-per-head floor, dv = 0.1 * 160
        (320, {}, (160, 32)),
        (640, {}, (160, 64)),
        (128, {}, (160, 16)),  # 12.8 -> nearest multiple of 8 = 16
        (256, {}, (160, 24)),  # 25.6 -> 24
        (512, {}, (160, 48)),  # 51.2 -> 48
        (116, {}, (160, 8)),  # 11.6 -> 8 (1.45 heads' worth rounds down)
        (120, {}, (160, 16)),  # 12.0 -> 16 (1.5 rounds half up)
        (640, {"kappa": 0.5, "upsilon": 0.5}, (320, 320)),
        (20, {"kappa": 0.5, "upsilon": 0.5, "num_heads": 4, "min_key_depth_per_head": 1}, (12, 12)),
        (64, {"upsilon": 0.01}, (160, 8)),  # at least num_heads
        (12, {"upsilon": 0.9, "num_heads": 8, "min_key_depth_per_head": 1}, (8, 8)),  # at most F_out
    ],
)
def test_attention_depths(f_out: int, kwargs: dict, expected: tuple[int, int]) -> None:
    args = {"kappa": 0.2, "upsilon": 0.1, "num_heads": 8, "min_key_depth_per_head": 20} | kwargs
    dk, dv = attention_depths(f_out, **args)
    assert (dk, dv) == expected
    assert dk % args["num_heads"] == 0 and dv % args["num_heads"] == 0 and 0 < dv <= f_out


@pytest.mark.parametrize("f_out", [8, 16, 48, 160, 320, 640])
@pytest.mark.parametrize("num_heads", [1, 2, 4, 8])
def test_kappa_upsilon_one_is_fully_attentional(f_out: int, num_heads: int) -> None:
    dk, dv = attention_depths(f_out, kappa=1, upsilon=1, num_heads=num_heads, min_key_depth_per_head=1)
    assert dv == f_out and dk == f_out


def test_depth_errors_name_the_layer() -> None:
    with pytest.raises(ValueError, match=r"num_heads=8 is larger than out_channels=4 of layer2\.0\.conv1"):
        attention_depths(4, kappa=0.2, upsilon=0.1, num_heads=8, min_key_depth_per_head=1,
                         name="layer2.0.conv1")
    with pytest.raises(ValueError, match="upsilon=1 .* needs num_heads to divide out_channels"):
        attention_depths(12, kappa=1, upsilon=1, num_heads=8, min_key_depth_per_head=1)


def names(model: nn.Module, attention) -> list[str]:
    return [s.name for s in resolve_placement(model.arch_family, model.conv_slots, attention)]


def test_preset_placements_full_size() -> None:
    resnet, wrn = create_model("resnet34"), create_model("wrn-28-10")
    assert names(resnet, "seed") == ["layer4.2.conv2"]
    assert names(wrn, "seed") == ["block3.0.conv1"]
    assert names(resnet, "paper") == PAPER_RESNET34 and len(PAPER_RESNET34) == 13
    assert names(wrn, "paper") == PAPER_WRN28 and len(PAPER_WRN28) == 12
    assert names(resnet, "none") == names(resnet, None) == [] and names(wrn, "none") == []
    assert len(names(create_model("wrn-40-4", base_width=2), "paper")) == 18


def test_custom_placement() -> None:
    model = create_model("resnet34", base_width=2)
    assert names(model, ["layer3.1", "layer1.0"]) == ["layer1.0.conv1", "layer3.1.conv1"]  # forward order
    assert names(model, ["layer4.2.conv2", "layer2.0"]) == ["layer2.0.conv1", "layer4.2.conv2"]
    assert names(model, " layer1.2 ") == ["layer1.2.conv1"]
    assert names(model, "layer1.0,layer2.0") == ["layer1.0.conv1", "layer2.0.conv1"]
    assert names(model, []) == []
    assert set(model.block_names) == {s.block for s in model.conv_slots}


@pytest.mark.parametrize(
    ("attention", "fragment"),
    [
        ("papr", "unknown placement or block 'papr'"),
        (["layer5.0"], "unknown placement or block 'layer5.0'"),
        (["block1.0"], "unknown placement or block 'block1.0'"),  # a WRN name on a ResNet
        (["layer1.0", "layer1.0.conv1"], "lists conv 'layer1.0.conv1' twice"),
        (3, "attention must be 'none', 'seed', 'paper' or a list of block names"),
    ],
)
def test_bad_placement(attention, fragment: str) -> None:  # the names come from the table of placements
    with pytest.raises(ValueError) as info:
        create_model("resnet34", base_width=2, attention=attention)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kappa": 0.0}, "kappa must be a fraction in (0, 1]"),
        ({"kappa": 1.5}, "kappa must be a fraction in (0, 1]"),
        ({"upsilon": -0.1}, "upsilon must be a fraction in (0, 1]"),
        ({"num_heads": 0}, "num_heads must be a positive integer"),
        ({"num_heads": 2.0}, "num_heads must be a positive integer"),
        ({"min_key_depth_per_head": 0}, "min_key_depth_per_head must be a positive integer"),
        ({"relative": "yes"}, "relative must be True or False"),
        ({"attention": "paper"}, "num_heads=8 is larger than out_channels=4 of layer2.0.conv1"),
        ({"attention": "paper", "base_width": 3, "num_heads": 4, "kappa": 1, "upsilon": 1}, "upsilon=1 ("),
    ],
)
def test_bad_attention_options(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        create_model("resnet34", **({"base_width": 2} | kwargs))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_failed_placement_leaves_model_untouched() -> None:
    model = create_model("resnet34", base_width=2)
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError):
        apply_attention(model, ["layer1.0", "layer9.0"])
    with pytest.raises(ValueError):
        apply_attention(model, "paper", num_heads=8)  # fails only at layer2 (4 channels)
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert model.attention_layers == []


# ---------------------------------------------------------------- augmented models (needs aacn.nn.AAConv2d)


def aa_modules(model: nn.Module) -> dict[str, nn.Module]:
    from aacn.nn import AAConv2d

    return {n: m for n, m in model.named_modules() if isinstance(m, AAConv2d)}


@pytest.mark.parametrize(
    ("name", "placement", "count"),
    [("resnet34", "paper", 13), ("wrn-28-10", "paper", 12),
     ("resnet34", "seed", 1), ("wrn-28-10", "seed", 1)],
)
def test_full_size_params_within_two_percent(name: str, placement: str, count: int) -> None:
    plain = n_params(create_model(name))
    model = create_model(name, attention=placement)
    assert len(model.attention_layers) == len(aa_modules(model)) == count
    assert abs(n_params(model) - plain) / plain < 0.02


def test_attention_layers_describe_wrn28_paper() -> None:
    model = create_model("wrn-28-10", attention="paper")
    modules = aa_modules(model)
    layers = model.attention_layers
    assert [d["name"] for d in layers] == PAPER_WRN28 == list(modules)
    grid = {"block1": 32, "block2": 16, "block3": 8}
    for d in layers:
        group, index = d["name"].split(".")[:2]
        width = {"block1": 160, "block2": 320, "block3": 640}[group]
        first = index == "0"
        stride = 2 if first and group != "block1" else 1
        side = grid[group]  # a stride-2 layer attends over its 2x2-pooled input: the output grid
        assert d == {
            "name": d["name"],
            "in_channels": {"block1": 16, "block2": 160, "block3": 320}[group] if first else width,
            "out_channels": width,
            "stride": stride,
            "resolution": [side, side],
            "dk": 160,
            "dv": width // 10,
            "num_heads": 8,
            "relative": True,
        }
        m = modules[d["name"]]
        assert (m.dk, m.dv, m.num_heads) == (d["dk"], d["dv"], d["num_heads"])
    others = [s.name for s in model.conv_slots if s.name not in modules]
    assert all(type(model.get_submodule(n)) is nn.Conv2d for n in others)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet34", {"base_width": 4}),
        ("resnet34", {"base_width": 4, "stem": "imagenet"}),
        ("resnet34", {"base_width": 4, "input_size": 24}),
        ("wrn-16-1", {"base_width": 4}),
        ("wrn-16-1", {"base_width": 4, "input_size": 20}),
    ],
)
def test_reported_resolutions_match_forward(name: str, kwargs: dict) -> None:
    model = create_model(name, attention="paper", **TINY, **kwargs)
    seen: dict[str, list[int]] = {}

    def record(mod: nn.Module, args: tuple, output: torch.Tensor) -> None:
        in_hw, out_hw = list(args[0].shape[-2:]), list(output.shape[-2:])
        assert in_hw == list(mod.feature_size)  # relative embeddings sized for the real input grid
        seen[names_of[mod]] = out_hw if mod.stride == 2 else in_hw  # the grid attention runs on

    names_of = {m: n for n, m in aa_modules(model).items()}
    for m in names_of:
        m.register_forward_hook(record)
    size = kwargs.get("input_size", 32)
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert seen == {d["name"]: d["resolution"] for d in model.attention_layers}
    assert any(d["stride"] == 2 for d in model.attention_layers)


VARIANTS = {
    "seed": {"attention": "seed"},
    "paper": {"attention": "paper"},
    "custom": {},  # filled per network: a block name and a conv name
    "no-relative": {"attention": "paper", "relative": False},
    "fully-attentional": {"attention": "paper", "kappa": 1.0, "upsilon": 1.0},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    ("name", "blocks"), [("resnet34", ("layer1.1", "layer3.0")), ("wrn-16-2", ("block1.0", "block2.1"))]
)
def test_forward_backward_every_variant(name: str, blocks: tuple[str, str], variant: str) -> None:
    torch.manual_seed(0)
    kwargs = dict(VARIANTS[variant])
    if variant == "custom":
        kwargs["attention"] = [blocks[0], f"{blocks[1]}.conv2"]
    model = create_model(name, num_classes=5, base_width=4, input_size=16, **TINY, **kwargs)
    layers = model.attention_layers
    assert layers and all(d["relative"] == kwargs.get("relative", True) for d in layers)
    if variant == "custom":
        assert [d["name"] for d in layers] == [f"{blocks[0]}.conv1", f"{blocks[1]}.conv2"]
    if variant == "fully-attentional":
        assert all(d["dv"] == d["out_channels"] for d in layers)
    x = torch.randn(2, 3, 16, 16)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 3])).backward()
    for n, m in aa_modules(model).items():
        grads = [p.grad for p in m.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), n
        assert any(g.abs().sum() > 0 for g in grads), n


# ---------------------------------------------------------------------- placements are one table of data
def test_adding_a_placement_is_one_entry_of_the_table(monkeypatch, capsys) -> None:
    monkeypatch.setitem(PLACEMENTS, "late", {"resnet": Rule(conv=0, from_stage=4), "wrn": Rule(conv=0, from_stage=3)})
    resnet = create_model("resnet34", base_width=2, attention="late", **TINY)
    assert [layer["name"] for layer in resnet.attention_layers] == ["layer4.0.conv1", "layer4.1.conv1",
                                                                     "layer4.2.conv1"]
    wrn = create_model("wrn-16-1", attention="late", **TINY)
    assert [layer["name"] for layer in wrn.attention_layers] == ["block3.0.conv1", "block3.1.conv1"]
    assert RunConfig(attention="late").arch.attention == "late"
    # the checks, their messages and the CLI's help name it
    with pytest.raises(OptionError, match="must be 'none', 'seed', 'paper', 'late' or a list of block names"):
        ModelConfig(attention=3)
    with pytest.raises(ValueError, match="unknown placement or block 'lat': use 'none', 'seed', 'paper', 'late',"):
        create_model("resnet34", base_width=2, attention="lat")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "none | seed | paper | late |" in " ".join(capsys.readouterr().out.split())
    # a placement without a rule for a family says so
    monkeypatch.setitem(PLACEMENTS, "resnet-only", {"resnet": Rule(last=2)})
    assert len(create_model("resnet34", base_width=2, attention="resnet-only", **TINY).attention_layers) == 2
    with pytest.raises(ValueError, match="placement 'resnet-only' has no rule for architecture family 'wrn'"):
        create_model("wrn-16-1", attention="resnet-only", **TINY)


def test_table2_placements_are_named_placements() -> None:
    assert TABLE2_PLACEMENTS == ("seed", "paper") and set(TABLE2_PLACEMENTS) <= set(PLACEMENTS)
