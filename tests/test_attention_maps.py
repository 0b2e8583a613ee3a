"""aacn attention-maps: the drawn weights equal the reference attention's softmax row of the query pixel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aacn.cli import main
from aacn.config import RunConfig
from aacn.data import load_cifar
from aacn.data.augment import Normalizer
from aacn.models import create_model
from aacn.nn.relative_attention import reference_attention
from aacn.train.rundir import RunDir
from aacn.viz.attention_maps import compute_attention_maps


def _write_run(path, data_dir, attention) -> tuple[RunConfig, torch.nn.Module]:
    """A finished run's directory: config, the final checkpoint of a randomly initialised model (no training)
    and results."""
    cfg = RunConfig(model="wrn-10-1", epochs=1, data_dir=str(data_dir), subset=100, val_size=50, out=str(path),
                    base_width=4, attention=attention, num_heads=2, min_key_depth_per_head=2)
    torch.manual_seed(0)
    model = create_model(cfg.arch).eval()
    run = RunDir(path)
    run.write_config(cfg.to_dict(), {"params": 0, "attention_layers": model.attention_layers})
    run.save_checkpoint({"model": model.state_dict(), "epoch": 1, "step": 0, "config": cfg.to_dict()}, 1)
    run.write_results({"config": cfg.to_dict()})
    return cfg, model


def _reference_rows(model, layer_name, images, pixels) -> torch.Tensor:
    """(Nh, P, gh, gw): softmax rows of the materialised reference attention, read off with one-hot values."""
    layer = model.get_submodule(layer_name)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(images)
        handle.remove()
        x = seen[0] if layer.stride == 1 else F.avg_pool2d(seen[0], 2, 2, ceil_mode=True)
        b, _, h, w = x.shape
        nh, dkh = layer.num_heads, layer.dk // layer.num_heads
        q, k, _ = torch.split(layer.qkv(x), [layer.dk, layer.dk, layer.dv], dim=1)
        q = q.reshape(b, nh, dkh, h, w).permute(0, 1, 3, 4, 2)
        k = k.reshape(b, nh, dkh, h, w).permute(0, 1, 3, 4, 2)
        one_hot = torch.eye(h * w).reshape(1, 1, h, w, h * w).expand(b, nh, h, w, h * w)
        probs = reference_attention(q, k, one_hot, layer.rel_h, layer.rel_w, dkh**-0.5)  # (B, Nh, H, W, HW)
    rows = [probs[0, :, y * h // 32, px * w // 32].reshape(nh, h, w) for px, y in pixels]
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("layer", [None, "block2.0.conv1"])  # stride 1 (the default layer) and stride 2
def test_maps_equal_reference_softmax_rows(tmp_path, tiny_cifar10, layer):
    cfg, model = _write_run(tmp_path / "run", tiny_cifar10, ["block1.0", "block2.0"])
    pixels = [(3, 20), (30, 1)]  # (x, y): swapped axes would pick other rows
    maps = compute_attention_maps(tmp_path / "run", layer=layer, image=5, pixels=pixels)
    assert maps.layer == (layer or "block1.0.conv1")  # default: the highest resolution (32x32)

    data = load_cifar("cifar10", tiny_cifar10, val_size=50, subset=100)
    images = Normalizer("standard", data.train.images)(data.test.images[5:6])
    expected = _reference_rows(model, maps.layer, images, pixels)
    grid = 32 if layer is None else 16
    assert maps.weights.shape == (2, 2, grid, grid)
    assert maps.queries == [(20 * grid // 32, 3 * grid // 32), (1 * grid // 32, 30 * grid // 32)]
    torch.testing.assert_close(torch.from_numpy(maps.weights), expected, atol=1e-6, rtol=1e-5)
    assert (maps.image == data.test.images[5].permute(1, 2, 0).numpy()).all()


def test_cli_writes_png(tmp_path, tiny_cifar10, capsys):
    _write_run(tmp_path / "run", tiny_cifar10, "seed")
    out = tmp_path / "maps.png"
    assert main(["attention-maps", str(tmp_path / "run"), "--pixels", "1,2", "31,31", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and str(out) in capsys.readouterr().out


@pytest.mark.parametrize("attention, extra, words", [
    ("none", [], ["no attention layers", "--attention"]),
    ("seed", ["--layer", "block1.0.conv1"], ["'block1.0.conv1'", "block3.0.conv1"]),
    ("seed", ["--pixels", "32,4"], ["32,4", "0..31"]),
    ("seed", ["--pixels", "4,-1"], ["4,-1", "0..31"]),
    ("seed", ["--image", "200"], ["--image 200", "0..199"]),
])
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_cifar10, capsys, attention, extra, words):
    _write_run(tmp_path / "run", tiny_cifar10, attention)
    assert main(["attention-maps", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_negative_pixel_is_read_as_a_pixel_and_refused(tmp_path, tiny_cifar10, capsys):
    _write_run(tmp_path / "run", tiny_cifar10, "seed")
    for pixels in (["-1,3"], ["2,2", "-5,-6"]):
        assert main(["attention-maps", str(tmp_path / "run"), "--pixels", *pixels]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "negative" in err[0] and pixels[-1] in err[0], err


def test_bad_out_is_refused_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"  # a config only: computing the maps would fail on the missing data folder
    RunDir(run).write_config(RunConfig(data_dir=str(tmp_path / "nodata"), attention="seed").to_dict(),
                             {"attention_layers": [{"name": "layer3.0.conv1", "resolution": [8, 8]}]})
    afile = tmp_path / "file.png"
    afile.write_bytes(b"x")
    for out, named in ((tmp_path, tmp_path), (afile / "below.png", afile)):  # a folder; a path below a file
        assert main(["attention-maps", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--out" in err[0] and str(named) in err[0], err


def test_run_without_checkpoint_is_one_line(tmp_path, tiny_cifar10, capsys):
    _write_run(tmp_path / "run", tiny_cifar10, "seed")
    for path in RunDir(tmp_path / "run").checkpoint_dir.iterdir():
        path.unlink()
    assert main(["attention-maps", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epoch-0001.pt does not exist" in err[0], err  # the final one: no other is used
