"""Typed configs: one declaration per option, and what is derived from it (flags, sweep keys, config.json in
format 3, older formats 2 and 1 still read)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from aacn.cli import build_parser, main
from aacn.config import (
    CONFIG_FORMAT,
    OPTIONS,
    RESULT_NEUTRAL,
    SWEEP_KEYS,
    RunConfig,
)
from aacn.errors import OptionError, UserError
from aacn.flags import config_from_args
from aacn.models import ModelConfig, create_model

FLAT_NAMES = [
    "model", "base_width", "stem", "dropout", "attention", "relative", "num_heads", "kappa", "upsilon",
    "min_key_depth_per_head", "attention_impl", "dataset", "augment", "normalize", "subset", "val_size",
    "split_seed", "data_dir", "epochs", "batch_size", "recipe", "lr", "weight_decay", "label_smoothing", "device",
    "amp", "channels_last", "compile", "compile_mode", "sync_bn", "eval_batch_size", "tta", "checkpoint_keep",
    "progress", "tensorboard", "seed", "out",
]


def test_one_flat_config_and_the_network_it_names():
    config = RunConfig(model="wrn-16-4", epochs=3, kappa=0.1, attention="paper", dataset="cifar100", device="cpu")
    assert list(OPTIONS) == FLAT_NAMES and list(config.flat()) == FLAT_NAMES
    assert [f.name for f in dataclasses.fields(RunConfig)] == FLAT_NAMES  # every option is a declared field
    assert (config.model, config.epochs, config.kappa, config.attention, config.device) == (
        "wrn-16-4", 3, 0.1, "paper", "cpu")
    assert config.arch == ModelConfig(model="wrn-16-4", kappa=0.1, attention="paper", num_classes=100)
    assert RunConfig(**config.flat()) == config
    assert config.replace(epochs=5).epochs == 5 and config.epochs == 3
    assert dataclasses.replace(config, seed=2).seed == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        RunConfig(epochz=3)  # type: ignore[call-arg]


def test_defaults_are_the_declared_ones():
    config = RunConfig()
    assert config.flat() == {name: opt.default for name, opt in OPTIONS.items()}
    assert (config.num_heads, config.kappa, config.upsilon, config.min_key_depth_per_head) == (8, 0.2, 0.1, 20)
    assert config.arch == ModelConfig()


def test_result_neutral_and_sweep_keys_come_from_the_declarations():
    assert RESULT_NEUTRAL == {"out", "data_dir", "progress", "device", "compile", "compile_mode", "eval_batch_size",
                              "checkpoint_keep", "attention_impl", "tensorboard"}
    assert set(SWEEP_KEYS) == {"model", "base_width", "stem", "dropout", "attention", "relative", "num_heads",
                               "kappa", "upsilon", "min_key_depth_per_head", "attention_impl", "dataset", "augment",
                               "normalize", "subset", "val_size", "split_seed", "epochs", "batch_size", "recipe",
                               "lr", "weight_decay", "label_smoothing", "seed"}


@pytest.mark.parametrize(("options", "message"), [
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"epochs": 2.5}, "epochs must be a positive integer"),
    ({"dataset": "mnist"}, "dataset must be one of ['cifar10', 'cifar100']"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"amp": "int8"}, "amp must be one of"),
    ({"device": "gpu"}, "device must be one of auto, cpu, cuda, mps or cuda:N"),
    ({"kappa": 1.5}, "kappa must be a fraction in (0, 1]"),
    ({"relative": "yes"}, "relative must be True or False"),
    ({"label_smoothing": 1.0}, "label_smoothing must be a probability in [0, 1)"),
    ({"compile_mode": "fastest"}, "compile_mode must be one of ['default', 'reduce-overhead', 'max-autotune']"),
    ({"tta": 1}, "tta must be True or False"),
    ({"epochz": 3}, "unknown option(s) ['epochz']"),
    ({"lr": 10**400}, "lr must be a finite number, got an integer too large"),
    ({"lr": 10**5000}, "lr must be a finite number, got an integer too large"),  # str() of it would raise
])
def test_bad_values_are_refused_naming_the_option(options, message):
    with pytest.raises(OptionError) as info:
        RunConfig().replace(**options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


OLD_CONFIG = {  # config.json's "config" as aacn wrote it before the format had a version
    "model": "wrn-10-1", "dataset": "cifar10", "epochs": 2, "batch_size": 50, "recipe": "paper-sgd", "lr": None,
    "weight_decay": None, "label_smoothing": None, "augment": True, "normalize": "standard", "subset": 100,
    "val_size": 50, "split_seed": 0, "seed": 1, "data_dir": "/data", "out": "runs/x", "device": "cpu",
    "amp": "auto", "channels_last": None, "compile": False, "sync_bn": False, "eval_batch_size": 200,
    "checkpoint_keep": 2, "progress": False,
    "model_kwargs": {"base_width": 4, "attention": ["block2.0", "block3.0"], "min_key_depth_per_head": 2},
}


FORMAT_2 = {  # config.json's "config" as aacn wrote it from the nested groups until format 3 (results/ holds such)
    "format": 2,
    "arch": {"name": "wrn-10-1", "base_width": 4, "stem": None, "dropout": None, "input_size": 32,
             "attention": {"placement": ["block2.0", "block3.0"], "relative": True, "num_heads": 8, "kappa": 0.2,
                           "upsilon": 0.1, "min_key_depth_per_head": 2, "impl": "auto"}},
    "data": {"dataset": "cifar10", "augment": True, "normalize": "standard", "subset": 100, "val_size": 50,
             "split_seed": 0, "data_dir": "/data"},
    "optim": {"epochs": 2, "batch_size": 50, "recipe": "paper-sgd", "lr": None, "weight_decay": None,
              "label_smoothing": None},
    "system": {"device": "cpu", "amp": "auto", "channels_last": None, "compile": False, "compile_mode": "default",
               "sync_bn": False, "eval_batch_size": 200, "tta": False, "checkpoint_keep": 2, "progress": False},
    "seed": 1, "out": "runs/x",
}


FORMAT_2_GROUPS = {  # where format 2 held each option; three had other names there (FORMAT_2_NAMES)
    "arch": ("model", "base_width", "stem", "dropout"),
    "arch.attention": ("attention", "relative", "num_heads", "kappa", "upsilon", "min_key_depth_per_head",
                       "attention_impl"),
    "data": ("dataset", "augment", "normalize", "subset", "val_size", "split_seed", "data_dir"),
    "optim": ("epochs", "batch_size", "recipe", "lr", "weight_decay", "label_smoothing"),
    "system": ("device", "amp", "channels_last", "compile", "compile_mode", "sync_bn", "eval_batch_size", "tta",
               "checkpoint_keep", "progress", "tensorboard"),
    "": ("seed", "out"),
}
FORMAT_2_NAMES = {"model": "name", "attention": "placement", "attention_impl": "impl"}


def as_format2(config: dict) -> dict:
    """A format-3 ``config`` as aacn wrote it in format 2 (the records under results/ are such)."""
    nested: dict = {"format": 2}
    for group, names in FORMAT_2_GROUPS.items():
        node = nested
        for part in filter(None, group.split(".")):
            node = node.setdefault(part, {})
        node.update({FORMAT_2_NAMES.get(name, name): config[name] for name in names})
    nested["arch"]["input_size"] = 32
    return nested


def test_older_formats_load_and_the_new_one_round_trips(tmp_path):
    old = RunConfig.from_dict(OLD_CONFIG)
    assert (old.model, old.epochs, old.seed, old.base_width, old.min_key_depth_per_head) == ("wrn-10-1", 2, 1, 4, 2)
    assert old.attention == ("block2.0", "block3.0") and old.flat()["attention"] == ["block2.0", "block3.0"]
    assert old.num_heads == 8  # not given then: the default
    assert RunConfig.from_dict(FORMAT_2) == old == RunConfig.from_dict(as_format2(old.to_dict()))
    saved = old.to_dict()
    assert saved == {"format": CONFIG_FORMAT, **old.flat()} and CONFIG_FORMAT == 3
    assert saved["min_key_depth_per_head"] == 2 and saved["attention"] == ["block2.0", "block3.0"]
    path = tmp_path / "config.json"
    for data in (saved, OLD_CONFIG, FORMAT_2):
        path.write_text(json.dumps({"config": data, "info": {}}))
        assert RunConfig.load(path) == old


@pytest.mark.parametrize(("data", "message"), [
    ({**RunConfig().to_dict(), "format": CONFIG_FORMAT + 1}, "newer than this aacn reads"),
    ({**RunConfig().to_dict(), "extra": 1}, "unknown fields ['extra']"),
    ({**RunConfig().to_dict(), "epochs": 0}, "epochs must be a positive integer"),
    ({**FORMAT_2, "extra": 1}, "unknown fields ['extra']"),
    ({**FORMAT_2, "arch": {**FORMAT_2["arch"], "width": 3}}, "unknown fields ['arch.width']"),
    ({**FORMAT_2, "optim": "fast"}, "config field 'optim' must be an object"),
    ({**FORMAT_2, "optim": {"epochs": 0}}, "epochs must be a positive integer"),
    ({**FORMAT_2, "system": {"epochs": 3}}, "unknown fields ['system.epochs']"),
    ({**OLD_CONFIG, "model_kwargs": [1]}, "config field 'model_kwargs' must be an object"),
    ([1, 2, 3], "must be a JSON object"),
])
def test_bad_saved_configs_get_one_line_naming_the_file(tmp_path, data, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": data} if isinstance(data, dict) else data))
    with pytest.raises(UserError) as info:
        RunConfig.load(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_the_published_records_load_as_they_are():
    records = sorted((Path(__file__).resolve().parents[1] / "results").glob("*/*/config.json"))
    trained = [path for path in records if json.loads(path.read_text()).get("kind") != "anchor"]
    assert trained
    for path in trained:
        assert json.loads(path.read_text())["config"]["format"] in (2, CONFIG_FORMAT)  # runs before and after 3
        config = RunConfig.load(path)
        assert RunConfig.load(path.with_name("results.json")) == config
        assert RunConfig.from_dict(config.to_dict()) == config
        assert RunConfig.from_dict(as_format2(config.to_dict())) == config


def test_differences_name_fields_and_skip_result_neutral_ones():
    a = RunConfig(model="wrn-16-4", epochs=3, base_width=4)
    b = a.replace(base_width=8, out="elsewhere", device="cpu", attention_impl="reference")
    assert a.differences(b) == ["base_width: 4 != 8"]
    assert a.differences(a.replace(tta=True)) == ["tta: False != True"]  # a run with TTA records more numbers
    assert a.differences(b, ignore={"base_width"}) == []
    assert a.differences(a.replace(attention="seed")) == ["attention: 'none' != 'seed'"]


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["train", *argv])


def test_every_flag_of_train_still_works():
    args = _parse([
        "--model", "wrn-16-2", "--dataset", "cifar100", "--epochs", "3", "--batch-size", "64", "--recipe", "fast",
        "--lr", "0.05", "--weight-decay", "0", "--label-smoothing", "0.1", "--no-augment", "--normalize", "seed",
        "--subset", "1000", "--val-size", "0", "--split-seed", "2", "--seed", "3", "--data-dir", "/d",
        "--device", "cuda:1", "--amp", "bf16", "--no-channels-last", "--compile", "--compile-mode", "max-autotune",
        "--sync-bn", "--eval-batch-size", "100", "--tta", "--no-progress", "--base-width", "8", "--dropout", "0.3",
        "--attention", "block2.0, block3.1", "--no-relative", "--num-heads", "4", "--kappa", "0.25",
        "--upsilon", "0.5", "--min-key-depth-per-head", "2", "--attention-impl", "chunked", "--out", "o"])
    config = config_from_args(args)
    assert config.flat() == {
        "model": "wrn-16-2", "base_width": 8, "stem": None, "dropout": 0.3, "attention": ["block2.0", "block3.1"],
        "relative": False, "num_heads": 4, "kappa": 0.25, "upsilon": 0.5, "min_key_depth_per_head": 2,
        "attention_impl": "chunked", "dataset": "cifar100", "augment": False, "normalize": "seed", "subset": 1000,
        "val_size": 0, "split_seed": 2, "data_dir": "/d", "epochs": 3, "batch_size": 64, "recipe": "fast",
        "lr": 0.05, "weight_decay": 0.0, "label_smoothing": 0.1, "device": "cuda:1", "amp": "bf16",
        "channels_last": False, "compile": True, "compile_mode": "max-autotune", "sync_bn": True,
        "eval_batch_size": 100, "tta": True, "checkpoint_keep": 2, "progress": False, "tensorboard": False, "seed": 3,
        "out": "runs/run"}
    assert config_from_args(_parse(["--stem", "imagenet", "--channels-last"])).flat() == {
        **RunConfig().flat(), "stem": "imagenet", "channels_last": True}
    assert config_from_args(_parse([])) == RunConfig()


@pytest.mark.parametrize(("argv", "words"), [
    (["--kappa", "0"], ["--kappa", "(0, 1]"]),
    (["--epochs", "x"], ["--epochs", "integer"]),
    (["--recipe", "sgd"], ["--recipe", "paper-sgd"]),
    (["--compile-mode", "fastest"], ["--compile-mode"]),
    (["--device", "gpu"], ["--device", "cuda:N"]),
    (["--lr", "inf"], ["--lr", "positive"]),
    (["--dropout", "1"], ["--dropout", "[0, 1)"]),
])
def test_bad_flags_exit_2_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_model_config_and_keyword_form_build_the_same_network():
    config = RunConfig(model="wrn-10-1", base_width=4, attention="paper", num_heads=2, min_key_depth_per_head=2,
                       dataset="cifar100")
    torch.manual_seed(0)
    a = create_model(config.arch)
    torch.manual_seed(0)
    b = create_model("wrn-10-1", 100, base_width=4, attention="paper", num_heads=2, min_key_depth_per_head=2)
    assert a.attention_layers == b.attention_layers and a.fc.out_features == 100
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="takes no other arguments"):
        create_model(config.arch, 10)
