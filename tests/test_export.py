"""aacn.export.export_model: deployable pt2 and ONNX files whose outputs equal the eager model's."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from aacn import export as E
from aacn.errors import UserError
from aacn.models import create_model
from aacn.nn import AAConv2d


@pytest.fixture(scope="module")
def model():
    """A tiny AA-WRN (paper placement) with non-trivial BatchNorm statistics, left in train mode."""
    torch.manual_seed(0)
    net = create_model("wrn-10-1", base_width=2, attention="paper", num_heads=2, min_key_depth_per_head=2,
                       input_size=8, attention_impl="chunked")
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 3, 8, 8))
    return net


def _images(n, seed):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _eager(model, images):
    training = model.training
    with torch.no_grad():
        out = model.eval()(images)
    model.train(training)
    return out


def test_pt2_round_trip_equals_eager_for_any_batch_size(model, tmp_path):
    path = E.export_model(model, _images(1, 0), tmp_path / "out" / "model.pt2")  # a batch of 1 still exports
    assert path == tmp_path / "out" / "model.pt2" and path.is_file()
    layers = [m for m in model.modules() if isinstance(m, AAConv2d)]
    assert model.training and layers and {m.attention_impl for m in layers} == {"chunked"}  # restored
    loaded = torch.export.load(path).module()
    for n in (1, 2, 5):
        images = _images(n, n)
        torch.testing.assert_close(loaded(images), _eager(model, images), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob("out/.*.tmp"))


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or E._missing_onnx() is not None,
                    reason="needs onnx, onnxscript and onnxruntime (pip install onnx onnxscript onnxruntime)")
def test_onnx_round_trip_equals_eager(model, tmp_path):
    import onnxruntime

    path = E.export_model(model, _images(2, 0), tmp_path / "model.onnx", format="onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = _images(3, 3)
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), _eager(model, images), rtol=1e-4, atol=1e-5)


def test_bad_requests_are_one_line_user_errors(model, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"^format: expected one of 'pt2', 'onnx', got 'tflite'$"):
        E.export_model(model, _images(1, 0), tmp_path / "m", format="tflite")
    with pytest.raises(UserError, match=r"^example: expected an input batch of shape \(B, C, H, W\), got \(3, 8, 8\)$"):
        E.export_model(model, _images(1, 0)[0], tmp_path / "m")
    monkeypatch.setattr(E.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"^exporting ONNX needs the packages onnx onnxscript: pip install onnx "):
        E.export_model(model, _images(1, 0), tmp_path / "m.onnx", format="onnx")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------- aacn export RUN_DIR
@pytest.fixture(scope="module")
def aa_run(tiny_cifar10, tmp_path_factory):
    """A finished one-epoch run of a tiny AA-WRN with the paper's placement."""
    from aacn.config import RunConfig
    from aacn.train.loop import run

    out = tmp_path_factory.mktemp("runs") / "aa"
    run(RunConfig(model="wrn-10-1", epochs=1, subset=100, val_size=100, batch_size=50, lr=0.05,
                  data_dir=str(tiny_cifar10), out=str(out), device="cpu", progress=False,
                  base_width=4, attention="paper", num_heads=2, min_key_depth_per_head=2))
    return out


def _test_images(run_dir, n):
    """The first ``n`` test images of the run's data, normalised as the run's training normalised them."""
    from aacn.config import RunConfig
    from aacn.data.augment import Normalizer
    from aacn.data.cifar import load_cifar

    config = RunConfig.load(run_dir / "config.json")
    data = load_cifar(config.dataset, config.data_dir, val_size=config.val_size, split_seed=config.split_seed,
                      subset=config.subset, progress=False)
    return Normalizer(config.normalize, data.train.images)(data.test.images[:n])


def test_aacn_export_pt2_equals_the_trained_model_on_test_images(aa_run, capsys):
    from aacn.cli import main
    from aacn.inference import load_model

    assert main(["export", str(aa_run)]) == 0
    path = aa_run / "model.pt2"
    out = capsys.readouterr().out
    assert f"wrote {path}" in out and "torch.export.load" in out and "--normalize standard" in out
    images = _test_images(aa_run, 5)
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        expected = load_model(aa_run)(images)
    assert expected.shape == (5, 10)
    torch.testing.assert_close(loaded(images), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded(images[:1]), expected[:1], rtol=1e-5, atol=1e-5)  # any batch size


def test_aacn_export_static_batch_and_out(aa_run, tmp_path, capsys):
    from aacn.cli import main

    path = tmp_path / "deploy" / "aa.pt2"
    assert main(["export", str(aa_run), "--out", str(path), "--batch", "3"]) == 0
    assert "N = 3 exactly" in capsys.readouterr().out
    program = torch.export.load(path)
    assert tuple(program.module()(_test_images(aa_run, 3)).shape) == (3, 10)
    assert [tuple(n.meta["val"].shape) for n in program.graph.nodes if n.op == "placeholder"][-1] == (3, 3, 32, 32)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or E._missing_onnx() is not None,
                    reason="needs onnx, onnxscript and onnxruntime (pip install onnx onnxscript onnxruntime)")
def test_aacn_export_onnx_equals_the_trained_model_on_test_images(aa_run, tmp_path, capsys):
    import onnxruntime

    from aacn.cli import main
    from aacn.inference import load_model

    path = tmp_path / "model.onnx"
    assert main(["export", str(aa_run), "--format", "onnx", "--out", str(path)]) == 0
    assert "onnxruntime.InferenceSession" in capsys.readouterr().out
    images = _test_images(aa_run, 4)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = load_model(aa_run)(images)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err


def test_aacn_export_bad_requests_are_one_line(aa_run, tmp_path, capsys, monkeypatch):
    from aacn.cli import main

    bare = tmp_path / "bare"  # a run's config, no checkpoint
    bare.mkdir()
    (bare / "config.json").write_bytes((aa_run / "config.json").read_bytes())
    assert main(["export", str(bare)]) == 2
    _one_line_error(capsys, "has not finished", "--partial")
    assert main(["export", str(bare), "--partial"]) == 2
    _one_line_error(capsys, "has no checkpoint")
    assert not (bare / "model.pt2").exists()
    assert main(["export", str(tmp_path / "nothing")]) == 2
    _one_line_error(capsys, "not a run directory")
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(SystemExit) as exited:  # argparse's own error: one line, exit 2
        main(["export", str(aa_run), "--format", "tflite"])
    assert exited.value.code == 2
    _one_line_error(capsys, "--format", "tflite", "pt2", "onnx")
    assert main(["export", str(aa_run), "--out", str(tmp_path)]) == 2  # a folder: checked before any work
    _one_line_error(capsys, "--out", "is a folder")
    assert main(["export", str(aa_run), "--batch", "0"]) == 2
    _one_line_error(capsys, "--batch")
    monkeypatch.setattr(E.importlib.util, "find_spec", lambda name: None)
    assert main(["export", str(aa_run), "--format", "onnx"]) == 2
    _one_line_error(capsys, "onnx onnxscript", "pip install")
    assert not (aa_run / "model.onnx").exists()
