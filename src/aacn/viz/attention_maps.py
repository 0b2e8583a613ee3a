"""Attention maps of a trained attention-augmented layer: where does a query pixel look?

``aacn attention-maps RUN_DIR`` rebuilds the run's model from ``config.json`` and loads its final checkpoint
(:func:`aacn.inference.load_model`, ``torch.load(weights_only=True)``; an unfinished run's newest only with
``--partial``), feeds one normalised test image,
captures the input of the chosen :class:`aacn.nn.AAConv2d` with a forward hook and asks it for
:meth:`~aacn.nn.AAConv2d.attention_weights` of a few query pixels. The figure is a grid, heads (rows) × query
pixels (columns): each panel shows the image with that head's attention over the layer's grid laid on top (one
cell per grid position, so a 4×4 grid shows 8×8 pixel blocks) and the query pixel marked. Coordinates follow
image conventions throughout: a pixel is given as ``x,y`` with ``x`` the column (left to right) and ``y`` the
row (top to bottom), and panels are drawn with rows as y and columns as x.

A query pixel ``(x, y)`` of the H×W image (32×32 on CIFAR) maps to the attention grid cell ``(row, col) =
(y * gh // H, x * gw // W)`` for a ``gh × gw`` grid (the layer's input size, halved by its 2×2 pooling when it has
stride 2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.files import check_output_dir, check_output_file
from aacn.inference import load_model
from aacn.train.rundir import RunDir, recorded_config

__all__ = [
    "DEFAULT_PIXELS",
    "AttentionMaps",
    "default_layer",
    "layer_attention",
    "compute_attention_maps",
    "plot_attention_maps",
    "attention_maps_command",
]

# Default query pixels (x, y) of a 32×32 image: spread over it and deliberately asymmetric, so a swapped axis
# shows. Images of another size get them scaled (default_pixels).
DEFAULT_PIXELS: tuple[tuple[int, int], ...] = ((6, 8), (24, 6), (16, 16), (9, 26))


def default_pixels(height: int, width: int) -> list[tuple[int, int]]:
    """:data:`DEFAULT_PIXELS` scaled from 32×32 to a ``height × width`` image (unchanged for 32×32)."""
    return [(x * width // 32, y * height // 32) for x, y in DEFAULT_PIXELS]


@dataclass
class AttentionMaps:
    """Attention weights of one layer for one image.

    Attributes:
        layer: the AA layer's module name.
        image: the image, uint8 ``(H, W, C)`` (``(H, W)`` for one channel).
        image_index: its index in the test set; ``label`` its class name.
        pixels: query pixels as ``(x, y)`` image coordinates.
        queries: the same queries as ``(row, col)`` on the attention grid.
        weights: float ``(Nh, P, gh, gw)``; ``weights[h, p]`` sums to one.
    """

    layer: str
    image: np.ndarray
    image_index: int
    label: str
    pixels: list[tuple[int, int]]
    queries: list[tuple[int, int]]
    weights: np.ndarray


def default_layer(layers: Sequence[dict]) -> str:
    """The highest-resolution augmented layer (the first such in forward order)."""
    return max(layers, key=lambda d: d["resolution"][0] * d["resolution"][1])["name"]


def _check_pixels(pixels: Sequence[tuple[int, int]], height: int, width: int) -> list[tuple[int, int]]:
    for x, y in pixels:
        if not (0 <= x < width and 0 <= y < height):
            negative = "coordinates cannot be negative; " if x < 0 or y < 0 else ""
            raise UserError(f"--pixels {x},{y} is outside the {width}x{height} image: {negative}x (column) must be "
                            f"in 0..{width - 1} and y (row) in 0..{height - 1}")
    return [(int(x), int(y)) for x, y in pixels]


def layer_attention(
    model: nn.Module, layer: str, images: torch.Tensor, pixels: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Attention weights of ``model``'s AA layer ``layer`` for query pixels of ``images``.

    Args:
        model: a model in eval mode containing an :class:`aacn.nn.AAConv2d` named ``layer``.
        images: normalised model input ``(B, 3, H, W)``.
        pixels: query pixels as ``(x, y)`` = (column, row) in the ``H × W`` image.

    Returns:
        ``(weights, queries)``: ``(B, Nh, P, gh, gw)`` probabilities and the ``(row, col)`` grid cells queried.
    """
    module = model.get_submodule(layer)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, inputs, output: captured.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    x = captured[0]
    height, width = images.shape[-2:]
    # Grid size from the layer itself: its input, pooled 2x2 (ceil) when strided.
    gh, gw = (x.shape[-2], x.shape[-1]) if module.stride == 1 else (-(-x.shape[-2] // 2), -(-x.shape[-1] // 2))
    queries = [(y * gh // height, px * gw // width) for px, y in pixels]
    with torch.no_grad():
        weights = module.attention_weights(x, queries)
    return weights, queries


def _run_layers(run: RunDir) -> tuple[RunConfig, list[dict]]:
    """The run's config and its attention layers (as ``config.json`` describes them); one line if it has none."""
    if not run.config_path.is_file():
        raise UserError(f"{run.path} is not a run directory (no config.json); pass a folder written by 'aacn train'")
    stored = run.read_config()
    config = recorded_config(run)
    layers = stored.get("info", {}).get("attention_layers") or []
    if not layers:
        raise UserError(f"run {run.path} has no attention layers (attention="
                        f"{config.attention!r}); attention maps need a run trained "
                        f"with --attention seed|paper|BLOCKS")
    return config, layers


def _check_layer(run: RunDir, layers: Sequence[dict], layer: str | None) -> str:
    names = [d["name"] for d in layers]
    layer = default_layer(layers) if layer is None else layer
    if layer not in names:
        raise UserError(f"--layer {layer!r} is not an attention layer of {run.path}; choose one of "
                        f"{', '.join(names)}")
    return layer


def compute_attention_maps(
    run_dir: str | os.PathLike,
    *,
    layer: str | None = None,
    image: int = 0,
    pixels: Sequence[tuple[int, int]] | None = None,
    data_dir: str | os.PathLike | None = None,
    partial: bool = False,
) -> AttentionMaps:
    """Attention weights of a trained run's AA layer for test image ``image`` (see the module docstring).

    The model comes from :func:`aacn.inference.load_model` (the run's config and final checkpoint; an unfinished
    run's newest checkpoint only with ``partial``).
    Raises :class:`UserError` for a folder that is no run, a run without attention, an unknown layer (listing
    the valid ones), an image index out of range, a pixel outside the image or a run without checkpoints.
    """
    from aacn.data.augment import Normalizer
    from aacn.data.registry import dataset, load_data

    run = RunDir(run_dir)
    config, layers = _run_layers(run)
    layer = _check_layer(run, layers, layer)
    _, height, width = dataset(config.dataset).image_shape
    pixels = _check_pixels(default_pixels(height, width) if pixels is None else pixels, height, width)
    data = load_data(config, data_dir=data_dir, progress=True)
    n_test = len(data.test)
    if not 0 <= image < n_test:
        raise UserError(f"--image {image} is out of range: the {config.dataset} test set has {n_test} images "
                        f"(0..{n_test - 1})")
    model = load_model(run.path, partial=partial)
    normalizer = Normalizer(config.normalize, data.train.images)
    img_u8 = data.test.images[image : image + 1]
    weights, queries = layer_attention(model, layer, normalizer(img_u8), pixels)
    shown = img_u8[0].permute(1, 2, 0).numpy()  # (H, W, C) as images are drawn
    return AttentionMaps(
        layer=layer,
        image=shown[..., 0] if shown.shape[-1] == 1 else shown,
        image_index=image,
        label=data.classes[int(data.test.labels[image])],
        pixels=pixels,
        queries=queries,
        weights=weights[0].float().numpy(),
    )


def plot_attention_maps(maps: AttentionMaps, path: str | os.PathLike) -> Path:
    """Draw ``maps`` as a grid: the image with the queries, then one column per query pixel, one row per head."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from aacn.viz.curves import save_figure

    nh, npix, gh, gw = maps.weights.shape
    height, width = maps.image.shape[:2]
    extent = (0, width, height, 0)  # x: columns left to right, y: rows top to bottom
    fig = Figure(figsize=(1.9 * (npix + 1), 1.9 * nh + 0.6))
    axes = fig.subplots(nh, npix + 1, squeeze=False)
    for h in range(nh):
        ax = axes[h, 0]
        ax.imshow(maps.image, extent=extent, interpolation="nearest")
        for i, (x, y) in enumerate(maps.pixels):
            ax.plot(x + 0.5, y + 0.5, "o", ms=5, mfc="none", mec="yellow", mew=1.5)
            ax.annotate(str(i + 1), (x + 0.5, y + 0.5), xytext=(3, -3), textcoords="offset points",
                        color="yellow", fontsize=7)
        ax.set_ylabel(f"head {h}", fontsize=8)
        for p, ((x, y), (row, col)) in enumerate(zip(maps.pixels, maps.queries, strict=True)):
            ax = axes[h, p + 1]
            ax.imshow(maps.image, extent=extent, interpolation="nearest")
            ax.imshow(maps.weights[h, p], extent=extent, interpolation="nearest", cmap="inferno", alpha=0.65,
                      vmin=0.0, vmax=float(maps.weights[h, p].max()))
            cell_h, cell_w = height / gh, width / gw
            ax.add_patch(Rectangle((col * cell_w, row * cell_h), cell_w, cell_h, fill=False, ec="cyan", lw=1))
            ax.plot(x + 0.5, y + 0.5, "+", ms=8, mew=1.5, color="cyan")
            if h == 0:
                ax.set_title(f"{p + 1}: x={x}, y={y}", fontsize=8)
    axes[0, 0].set_title(f"test image {maps.image_index}\n({maps.label})", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([0, width // 2, width])
        ax.set_yticks([0, height // 2, height])
        ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("x (column)", fontsize=7)
    fig.suptitle(f"attention of {maps.layer} ({gh}x{gw} grid, {nh} heads); colour scaled per panel", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def attention_maps_command(run_dir: str | os.PathLike, *, out: str | os.PathLike | None = None,
                           **query: Any) -> Path:
    """What ``aacn attention-maps`` does: compute the maps and write the PNG (default inside ``run_dir``).

    ``query``: :func:`compute_attention_maps`'s keyword arguments (``layer``, ``image``, ``pixels``,
    ``data_dir``). The output path is checked before the model is built or any data is loaded: a folder, a
    read-only place or a path below a file is one :class:`UserError` naming ``--out``.
    """
    if out is not None:
        check_output_file(out, "--out")
    elif Path(run_dir).is_dir():
        check_output_dir(run_dir, "--out")  # the default: inside RUN_DIR
    maps = compute_attention_maps(run_dir, **query)
    path = Path(out) if out is not None else Path(run_dir) / f"attention-{maps.layer}-img{maps.image_index}.png"
    return plot_attention_maps(maps, path)
