"""Deployable files of a model: a ``torch.export`` program (``.pt2``) or an ONNX model.

:func:`export_model` captures the model in eval mode as one graph, with a dynamic batch dimension, and writes it
atomically. The attention of every :class:`~aacn.nn.AAConv2d` is captured through an implementation that the
format can carry (the model's own setting is restored afterwards):

* ``"pt2"``: ``attention_impl="sdpa"``, the registered operator ``aacn::folded_flash_attention_cpu`` on CPU
  (plain ``scaled_dot_product_attention`` on CUDA). Memory-efficient, but loading the file needs the operator
  registered: ``import aacn.nn`` before ``torch.export.load(path)``.
* ``"onnx"``: ``attention_impl="reference"``, plain matrix products and a softmax that ONNX expresses; it
  materialises the ``(HW)^2`` logits of each image and head. Needs the ``onnx`` and ``onnxscript`` packages.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from aacn.errors import UserError
from aacn.files import atomic_write
from aacn.nn.aaconv import AAConv2d

__all__ = ["FORMATS", "check_format", "export_model"]

FORMATS: tuple[str, ...] = ("pt2", "onnx")
_ATTENTION_IMPL = {"pt2": "sdpa", "onnx": "reference"}


@contextmanager
def _exportable(model: nn.Module, impl: str):
    """``model`` in eval mode with every AAConv2d on ``impl``; training mode and impls restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, AAConv2d)]
    impls, training = [m.attention_impl for m in layers], model.training
    try:
        for m in layers:
            m.attention_impl = impl
        yield model.eval()
    finally:
        for m, old in zip(layers, impls, strict=True):
            m.attention_impl = old
        model.train(training)


def _export_program(model: nn.Module, example: Tensor, dynamic_batch: bool) -> torch.export.ExportedProgram:
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] < 2:  # torch.export specialises a dimension of size 0 or 1; the values do not matter
            example = example.new_zeros((2, *example.shape[1:]))
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},)
    with torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)


def _missing_onnx() -> str | None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    return " ".join(missing) if missing else None


def check_format(format: str) -> None:
    """Raise a one-line :class:`UserError` for an unknown ``format`` or for ONNX without its packages, so that
    callers can refuse a request before they load or build anything."""
    if format not in FORMATS:
        raise UserError(f"format: expected one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    if format == "onnx" and (missing := _missing_onnx()):
        raise UserError(f"exporting ONNX needs the packages {missing}: pip install {missing} "
                        "(or pip install 'aacn[export]')")


def export_model(model: nn.Module, example: Tensor, path: str | os.PathLike, format: str = "pt2", *,
                 dynamic_batch: bool = True) -> Path:
    """Write ``model`` (in eval mode) as a deployable file at ``path`` and return the path.

    Args:
        model: the network, e.g. from :func:`aacn.models.create_model` with trained weights loaded.
        example: an example input batch (B, C, H, W) on the model's device and in its dtype; the file accepts
            exactly this C, H, W, and any batch size (any B here, even 0) unless ``dynamic_batch`` is false.
        path: the file to write (replaced atomically; its folder is created).
        format: ``"pt2"`` (``torch.export.save``; load with ``torch.export.load`` after ``import aacn.nn``) or
            ``"onnx"`` (see the module docstring).
        dynamic_batch: false: the file accepts batches of exactly B images only (a static graph, for runtimes
            that want fixed shapes).

    Raises:
        UserError: an unknown ``format``, ONNX without its packages installed, an ``example`` that is not a
            4-d tensor, or a path that cannot be written (one line each, saying what to do).
    """
    check_format(format)
    if not isinstance(example, Tensor) or example.dim() != 4:
        shape = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise UserError(f"example: expected an input batch of shape (B, C, H, W), got {shape}")
    path = Path(path)
    with _exportable(model, _ATTENTION_IMPL[format]):
        program = _export_program(model, example, dynamic_batch)
    if format == "pt2":
        atomic_write(path, lambda fh: torch.export.save(program, fh), binary=True)
    else:
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
        atomic_write(path, lambda fh: fh.write(onnx_program.model_proto.SerializeToString()), binary=True)
    return path
