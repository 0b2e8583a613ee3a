"""What a run prints: a progress bar per epoch (loss, accuracy, images/s) and one summary line per epoch."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from tqdm import tqdm


class EpochProgress:
    """A tqdm bar over one epoch's steps, updated at the loop's sync points only (no extra device syncs)."""

    def __init__(self, epoch: int, epochs: int, steps: int, *, initial: int = 0, enabled: bool = True):
        self._bar = None
        self._last = initial
        self._start = time.perf_counter()
        if enabled:
            self._bar = tqdm(total=steps, initial=initial, desc=f"epoch {epoch}/{epochs}", unit="step",
                             leave=False, dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, sums: torch.Tensor, world_size: int) -> None:
        """Show ``step`` and the running ``(loss * n, correct, n)`` sums of this rank."""
        if self._bar is None:
            return
        seconds = time.perf_counter() - self._start
        loss, correct, count = sums.tolist()
        self._bar.update(step - self._last)
        self._last = step
        if count:
            self._bar.set_postfix(loss=f"{loss / count:.3f}", acc=f"{100 * correct / count:.1f}%",
                                  img_s=f"{count * world_size / max(seconds, 1e-9):,.0f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def percent(value: float | None) -> str:
    """``12.34%``, or ``-`` for a value that was not measured."""
    return "-" if value is None else f"{value:.2f}%"


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    """One line per finished epoch; values that were not measured (no validation split) show as ``-``."""
    if row.get("val_acc") is None:
        val = "  val -"
    else:
        val = f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}%"
    speed = "-" if row.get("images_per_s") is None else f"{row['images_per_s']:,.0f}"
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"
            f"{val}  lr {row['lr']:.4g}  {row['epoch_time_s']:.1f} s  {speed} img/s")


def describe_attention(layers: list[dict[str, Any]]) -> str:
    """'no attention' or the augmented layers with their resolution and depths."""
    if not layers:
        return "no attention"
    parts = []
    for layer in layers:
        h, w = layer["resolution"]
        parts.append(f"{layer['name']} @ {h}x{w} (dk={layer['dk']}, dv={layer['dv']}, Nh={layer['num_heads']}"
                     f"{'' if layer.get('relative', True) else ', no rel'})")
    return f"{len(layers)} attention-augmented conv(s): " + ", ".join(parts)


def describe_data(provenance: dict[str, Any] | None) -> str:
    """The data's label in one line, said before training: official files, or which files are not."""
    if not isinstance(provenance, dict) or not provenance.get("label"):
        return "data of unknown origin (no integrity record)"
    differing = provenance.get("differing_files") or []
    if provenance["label"] == "official":
        return "official files (every MD5 matches the published checksums)"
    named = ", ".join(map(str, differing[:3])) + (", ..." if len(differing) > 3 else "")
    return (f"not official: {len(differing)} file(s) differ from the published checksums ({named}); "
            "accuracies are comparable with runs on the same images only")


def depth_overrides(layers: list[dict[str, Any]], kappa: float, upsilon: float) -> str | None:
    """One line naming the augmented layers whose key or value depth is not ``round(kappa * F_out)`` /
    ``round(upsilon * F_out)`` up to a multiple of the heads (a minimum key depth per head, or at least one
    value channel per head, decided it), or ``None`` when kappa and upsilon decide every depth."""
    notes = []
    for layer in layers:
        f_out, heads = layer["out_channels"], layer["num_heads"]
        for what, ratio, depth in (("dk", kappa, layer["dk"]), ("dv", upsilon, layer["dv"])):
            asked = ratio * f_out
            if abs(depth - asked) >= heads:
                notes.append(f"{layer['name']} {what}={depth} (asked {asked:g} = {ratio:g} x {f_out})")
    if not notes:
        return None
    return ("attention depths set by the per-head minimums, not by kappa/upsilon: " + "; ".join(notes)
            + " (see --num-heads and --min-key-depth-per-head)")
