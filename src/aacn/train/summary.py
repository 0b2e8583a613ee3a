"""The numbers of a run, computed in one place: one row per epoch (``metrics.jsonl``) and the results
(``results.json``, which ``aacn report`` reads).

A value that was not measured (no validation split with ``--val-size 0``; TTA not asked for) is ``None``, which
the records store as JSON ``null``, never ``NaN``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Keys of an epoch row that measure the machine, not the model (they differ between identical runs).
TIME_KEYS = frozenset({"epoch_time_s", "images_per_s", "peak_mem_bytes"})


def epoch_row(epoch: int, sums: Sequence[float], val: dict[str, float | None], *, lr: float, seconds: float,
              timed_images: float, peak_mem_bytes: int, num_classes: int) -> dict[str, Any]:
    """The ``metrics.jsonl`` row of a finished epoch.

    ``sums``: ``(loss * n, correct, n)`` over the epoch's training batches, all ranks; ``val``: the validation
    split's :func:`~aacn.train.evaluate.evaluate`; ``timed_images``: images trained in ``seconds`` (a resumed
    epoch's earlier part was not timed).
    """
    loss, correct, count = sums
    row = {
        "epoch": epoch, "train_loss": loss / count, "train_acc": 100.0 * correct / count,
        "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr,
        "epoch_time_s": seconds, "images_per_s": timed_images / seconds if seconds > 0 else None,
        "peak_mem_bytes": peak_mem_bytes,
    }
    if num_classes > 10:
        row["val_top5"] = val["top5"]
    return row


def summarize(rows: Sequence[dict[str, Any]], evaluations: dict[str, dict[str, float | None]], *,
              wall_time_s: float, model_facts: dict[str, Any]) -> dict[str, Any]:
    """The results of a finished run.

    ``rows``: its epoch rows; ``evaluations``: the final :func:`~aacn.train.evaluate.evaluate` of each split
    (``train``, ``val``, ``test`` and, with TTA, ``test_tta``); ``model_facts``: anything else to record
    (model, params, FLOPs, config, provenance, ...), copied as is.
    """
    results: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        ev = evaluations[split]
        results.update({f"{split}_acc": ev["acc"], f"{split}_loss": ev["loss"]})
        if split != "train":
            results[f"{split}_top5"] = ev["top5"]
    if "test_tta" in evaluations:
        ev = evaluations["test_tta"]
        results.update({"test_acc_tta": ev["acc"], "test_top5_tta": ev["top5"], "test_loss_tta": ev["loss"]})
    speeds = [r["images_per_s"] for r in rows if r.get("images_per_s") is not None]
    results.update({
        "wall_time_s": wall_time_s,
        "train_time_s": sum(r["epoch_time_s"] for r in rows),
        "peak_mem_bytes": max((r["peak_mem_bytes"] for r in rows), default=0),
        "images_per_s": sum(speeds) / len(speeds) if speeds else None,
    })
    return {**model_facts, **results}


def summarize_partial(rows: Sequence[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """What an unfinished run's records say, in :func:`summarize`'s keys: its last epoch's accuracies (no test
    accuracy: the test set is evaluated only at the end)."""
    last = rows[-1] if rows else {}
    times = [r["epoch_time_s"] for r in rows if r.get("epoch_time_s") is not None]
    speeds = [r["images_per_s"] for r in rows if r.get("images_per_s") is not None]
    mems = [r["peak_mem_bytes"] for r in rows if r.get("peak_mem_bytes") is not None]
    return {
        "train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"), "test_acc": None, "test_top5": None,
        "train_time_s": sum(times) if times else None, "params": info.get("params"),
        "peak_mem_bytes": max(mems) if mems else None,
        "images_per_s": sum(speeds) / len(speeds) if speeds else None, "flops_per_image": None,
    }
