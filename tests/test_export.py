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
