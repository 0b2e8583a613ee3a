"""``aacn anchor``: a public airbench baseline trained on exactly the images aacn trains on, recorded as a run.

airbench (Keller Jordan's fast CIFAR-10 trainings, ``pip install -e ".[anchors]"``) reports 94.01%
(``airbench94``) and 96.05% (``airbench96``) test accuracy on the official CIFAR-10 files. Trained here on the
images that ``--data-dir`` holds, they say what those images cost against the official files and whether our own
recipes are behind, with nothing else changed.

How it runs, without any of airbench's code in aacn:

- The data are loaded with :func:`aacn.data.load_cifar` and ``val_size=0``: all 50,000 training images (in
  the loader's fixed split order; airbench reshuffles every epoch) and the 10,000 test images.
- :func:`airbench_arrays` converts a split to the cache airbench's ``CifarLoader`` reads instead of calling
  torchvision (``train.pt`` / ``test.pt``: uint8 ``(N, 32, 32, 3)`` images, int64 labels, class names), and
  :func:`write_airbench_data` writes both into ``FOLDER/cifar10/``, a temporary folder.
- airbench's own ``train94`` / ``train96`` run unchanged with their defaults in that folder (airbench reads
  ``./cifar10``), after its one-step warm-up, with ``torch.manual_seed(seed)``. airbench is written for CUDA
  and fp16 (``.half().cuda()``, CUDA event timers, data mapped to ``cuda:0``), so it needs a CUDA GPU; choose
  the GPU with ``CUDA_VISIBLE_DEVICES``.
- The trained network is evaluated with airbench's ``evaluate`` at its three TTA levels.

The record is a run directory that ``aacn report`` reads beside ours (default ``runs/anchors/<name>-seed<k>``):

- ``config.json``: ``{"kind": "anchor", "config": {anchor, dataset, seed, train_images, test_images, tta,
  airbench, data_dir}, "provenance": aacn.provenance.environment(...), "data": the data's provenance}``;
- ``metrics.jsonl``: airbench's per-epoch log (``test_acc`` after each epoch; the loss and accuracy of the
  epoch's last batch; cumulative ``train_time_s``);
- ``results.json``: ``kind: "anchor"``, ``test_acc`` (no TTA), ``test_acc_tta`` (the mean of the logits of an
  image and its mirror, as ``aacn train --tta``), ``test_acc_tta_airbench`` (airbench's published TTA: mirror
  and one-pixel translations), ``train_time_s`` (airbench's own timer: training only, as it publishes),
  ``wall_time_s`` (the whole command), ``params``, ``epochs`` and ``airbench_settings`` (airbench's
  hyperparameters), ``provenance`` and ``data``. Accuracies are percentages.

A finished record with the same config and data is reused ("already finished"); a different one is refused
with the differing fields named (``--overwrite`` retrains). Anchors do not resume: an unfinished record is
trained again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from aacn.data.cifar import load_cifar, resolve_data_dir
from aacn.data.splits import Split, Splits
from aacn.errors import UserError
from aacn.experiments.airbench_cpu import cpu_float32, import_airbench
from aacn.files import atomic_write, check_output_dir, strict_json, write_json
from aacn.provenance import environment
from aacn.train.lock import run_lock

__all__ = ["ANCHORS", "INSTALL", "AnchorOutcome", "AnchorRun", "Trainer", "AirbenchTrainer", "airbench_arrays",
           "write_airbench_data", "epoch_row", "anchor_config", "default_out", "check_anchor", "airbench_trainer",
           "record_differences", "run_anchor"]

ANCHORS: dict[str, str] = {"airbench94": "train94", "airbench96": "train96"}  # name -> airbench's function
DATASET = "cifar10"  # airbench's networks and loader are CIFAR-10 only
INSTALL = 'pip install -e ".[anchors]"'
# Config fields that cannot change a result: a record is reused or refused whatever they are.
IGNORED = frozenset({"data_dir"})
RECORD_FILES = ("config.json", "metrics.jsonl", "results.json")


@dataclass(frozen=True)
class AnchorOutcome:
    """What one training gives: accuracies in percent, airbench's training time, its per-epoch rows."""

    test_acc: float
    test_acc_tta: float | None
    test_acc_tta_airbench: float | None
    train_time_s: float
    params: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # the anchor's own hyperparameters, as published


class Trainer(Protocol):
    """Trains one anchor on the airbench data in ``folder`` (``folder/cifar10/{train,test}.pt``)."""

    version: str  # the airbench version (recorded in the config: another version may train differently)
    device: torch.device

    def __call__(self, anchor: str, folder: Path, seed: int) -> AnchorOutcome: ...


@dataclass(frozen=True)
class AnchorRun:
    """The outcome of :func:`run_anchor`: ``status`` is ``"trained"`` or ``"finished"`` (an earlier record)."""

    status: str
    path: Path
    results: dict[str, Any]


# ------------------------------------------------------------------------------------------------ data
def airbench_arrays(splits: Sequence[Split], classes: Sequence[str]) -> dict[str, Any]:
    """``splits`` concatenated in the form of airbench's cached ``train.pt``/``test.pt``.

    airbench caches torchvision's ``CIFAR10``: ``images`` uint8 ``(N, 32, 32, 3)`` (height, width, channel, as
    torchvision's ``dataset.data``), ``labels`` int64 ``(N,)`` and ``classes`` (the class names). Image ``i`` is
    ``splits``' image ``i`` in order, with ``images[i, y, x, c] == split.images[i, c, y, x]``.
    """
    images = torch.cat([s.images for s in splits]) if splits else torch.empty(0, 3, 32, 32, dtype=torch.uint8)
    labels = torch.cat([s.labels for s in splits]) if splits else torch.empty(0, dtype=torch.int64)
    return {"images": images.permute(0, 2, 3, 1).contiguous(), "labels": labels.to(torch.int64).contiguous(),
            "classes": [str(c) for c in classes]}


def write_airbench_data(data: Splits, folder: str | os.PathLike) -> Path:
    """Write ``folder/cifar10/train.pt`` (train and val splits: every training image) and ``test.pt``.

    Returns ``folder/cifar10``, the path airbench's ``CifarLoader("cifar10")`` reads from inside ``folder``.
    """
    target = Path(folder) / DATASET
    for name, splits in (("train.pt", (data.train, data.val)), ("test.pt", (data.test,))):
        arrays = airbench_arrays(splits, data.classes)
        atomic_write(target / name, lambda fh, arrays=arrays: torch.save(arrays, fh), binary=True)
    return target


def epoch_row(variables: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """One ``metrics.jsonl`` row from the variables airbench logs after an epoch; ``None`` for its other log
    lines (the warm-up step, the final TTA evaluation).

    airbench's ``epoch`` counts from 0; its ``train_loss``/``train_acc`` are those of the epoch's last batch
    and its ``val_acc`` is measured on the test set, so the row names them so.
    """
    epoch = variables.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return None

    def number(key: str, scale: float = 1.0) -> float | None:
        value = variables.get(key)
        return scale * float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    total = number("total_time_seconds")
    before = previous.get("train_time_s") if previous else 0.0
    return {"epoch": epoch + 1, "test_acc": number("val_acc", 100.0),
            "last_batch_train_loss": number("train_loss"), "last_batch_train_acc": number("train_acc", 100.0),
            "train_time_s": total,
            "epoch_time_s": total - before if total is not None and before is not None else None}


# --------------------------------------------------------------------------------------------- airbench
@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _airbench_spec() -> Any:
    return importlib.util.find_spec("airbench")


class AirbenchTrainer:
    """airbench's own ``train94``/``train96``, unchanged: on CUDA in fp16 as published, or on the CPU in float32
    (:func:`aacn.experiments.airbench_cpu.cpu_float32`). Build it with :func:`airbench_trainer`."""

    def __init__(self, module: Any, version: str, device: str = "cuda", torchvision: str | None = None) -> None:
        self.airbench = module
        self.version = version
        self.device = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
        self.precision = "fp16" if device == "cuda" else "fp32"
        self.torchvision = torchvision

    def _runtime(self) -> contextlib.AbstractContextManager:
        return cpu_float32(self.airbench.utils) if self.device.type == "cpu" else contextlib.nullcontext()

    def __call__(self, anchor: str, folder: Path, seed: int) -> AnchorOutcome:
        airbench = self.airbench
        utils = airbench.utils
        train = getattr(airbench, ANCHORS[anchor])
        settings = getattr(getattr(airbench, f"lib_{anchor}", None), "hyp", None)  # e.g. lib_airbench94.hyp
        rows: list[dict[str, Any]] = []
        logged = utils.print_training_details  # airbench logs each epoch through this; keep its output, read it

        def record(variables: dict[str, Any], is_final_entry: bool) -> None:
            logged(variables, is_final_entry)
            row = epoch_row(variables, rows[-1] if rows else None)
            if row is not None:
                rows.append(row)

        with _working_dir(folder), self._runtime():
            utils.print_training_details = record
            try:
                train(run=-1)  # airbench's warm-up: one step, so the timed run starts warm
                torch.manual_seed(seed)
                start = time.perf_counter()
                model = train()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                wall = time.perf_counter() - start
            finally:
                utils.print_training_details = logged
            loader = airbench.CifarLoader(DATASET, train=False, batch_size=2000)
            plain, mirror, airbench_tta = (100.0 * airbench.evaluate(model, loader, tta_level=k) for k in range(3))
        train_time = rows[-1]["train_time_s"] if rows and rows[-1]["train_time_s"] is not None else wall
        return AnchorOutcome(test_acc=plain, test_acc_tta=mirror, test_acc_tta_airbench=airbench_tta,
                             train_time_s=train_time, params=sum(p.numel() for p in model.parameters()),
                             metrics=rows, settings=settings if isinstance(settings, dict) else {})


def check_anchor(name: str) -> None:
    """Raise a one-line :class:`UserError` for an anchor aacn does not know."""
    if name not in ANCHORS:
        raise UserError(f"unknown anchor {name!r}; choose one of {', '.join(ANCHORS)}")


def _anchor_device(device: str) -> str:
    """``"cuda"`` or ``"cpu"`` for ``--device``; ``auto`` is CUDA when there is a GPU, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("cuda", "cuda:0", "cpu"):
        return device.split(":")[0]
    if device.startswith("cuda:"):
        raise UserError(f"--device {device}: airbench places its data on cuda:0; choose the GPU with "
                        f"CUDA_VISIBLE_DEVICES={device.split(':', 1)[1]} and --device cuda")
    raise UserError(f"--device {device}: airbench runs on cuda (fp16, as published) or cpu (fp32); "
                    "choose --device cuda, cpu or auto")


def airbench_trainer(anchor: str, device: str = "auto") -> AirbenchTrainer:
    """The real trainer once airbench (and, for ``cuda``, a CUDA GPU) is there; otherwise one :class:`UserError`
    naming the fix. ``device``: ``auto`` (CUDA if available, else the CPU), ``cuda`` or ``cpu``."""
    kind = _anchor_device(device)
    if _airbench_spec() is None:
        raise UserError(f"airbench is not installed; run {INSTALL}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"no CUDA GPU is available for {anchor} with --device {device}; run it on a CUDA machine, "
                        "or with --device cpu (fp32, slower)")
    try:
        airbench, torchvision = import_airbench()
    except ImportError as exc:
        raise UserError(f"importing airbench failed ({exc}); run {INSTALL}") from None
    from importlib import metadata

    try:
        version = metadata.version("airbench")
    except metadata.PackageNotFoundError:
        version = str(getattr(airbench, "__version__", "unknown"))
    return AirbenchTrainer(airbench, version, kind, torchvision)


# ---------------------------------------------------------------------------------------------- records
def default_out(anchor: str, seed: int) -> Path:
    """``runs/anchors/<anchor>-seed<k>``."""
    return Path("runs") / "anchors" / f"{anchor}-seed{seed}"


def anchor_config(anchor: str, data: Splits, seed: int, airbench: str, data_dir: str | None,
                  precision: str = "fp16") -> dict[str, Any]:
    """The ``config`` of an anchor record: what decides its result (``precision``: ``fp16`` on CUDA as
    published, ``fp32`` on the CPU), plus where the data came from."""
    return {"anchor": anchor, "dataset": data.name, "seed": seed, "train_images": len(data.train) + len(data.val),
            "test_images": len(data.test), "tta": True, "airbench": airbench, "precision": precision,
            "data_dir": data_dir}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); delete the folder or pass --overwrite") from None


def record_differences(stored: dict[str, Any], config: dict[str, Any], data: Any) -> list[str]:
    """How a stored ``config.json`` differs from the requested ``config`` and data, as ``name: old != new``
    (fields that cannot change a result left out)."""
    old = stored.get("config") if isinstance(stored.get("config"), dict) else {}
    out = [f"{name}: {old.get(name)!r} != {config.get(name)!r}"
           for name in sorted(set(old) | set(config)) if name not in IGNORED and old.get(name) != config.get(name)]
    if stored.get("data") is not None and data is not None and stored.get("data") != data:
        out.append("data: the stored record was trained on other images (its data provenance differs)")
    return out


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in rows)
    atomic_write(path, lambda fh: fh.write(text))


def run_anchor(anchor: str, **options: Any) -> AnchorRun:
    """Train ``anchor`` into its record folder, holding that folder's lock (:func:`aacn.train.lock.run_lock`)
    while it writes; ``options`` and what it raises are those of :func:`_run_anchor`."""
    with contextlib.ExitStack() as held:
        return _run_anchor(anchor, held=held, **options)


def _run_anchor(
    anchor: str,
    *,
    held: contextlib.ExitStack,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    trainer: Trainer | None = None,
    log: Callable[[str], Any] = print,
) -> AnchorRun:
    """Train ``anchor`` (``airbench94`` or ``airbench96``) on the CIFAR-10 in ``data_dir``; write its record.

    ``trainer`` replaces airbench (tests inject one); by default :func:`airbench_trainer` checks that airbench
    and a CUDA GPU are there. Raises :class:`UserError` for an unknown anchor, a missing requirement, or a
    finished record in ``out`` whose config or data differ (unless ``overwrite``).
    """
    check_anchor(anchor)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    start = time.perf_counter()
    trainer = trainer if trainer is not None else airbench_trainer(anchor, device)
    path = Path(out) if out is not None else default_out(anchor, seed)
    stored = _stored_anchor_config(path)
    held.enter_context(run_lock(path))  # one writer per record folder, until this function returns
    data = load_cifar(DATASET, data_dir, val_size=0)
    provenance_data = getattr(data, "provenance", None)
    precision = getattr(trainer, "precision", "fp16")
    config = anchor_config(anchor, data, seed, trainer.version, str(resolve_data_dir(data_dir)), precision)
    if stored is not None and (path / "results.json").is_file() and not overwrite:
        _check_same_record(path, stored, config, provenance_data)
        log(f"{anchor} already finished: {path / 'results.json'}")
        return AnchorRun("finished", path, _read(path / "results.json"))
    for name in RECORD_FILES:
        (path / name).unlink(missing_ok=True)

    provenance = environment(trainer.device, precision=f"{'float16' if precision == 'fp16' else 'float32'} (airbench)",
                             compile=False)
    if getattr(trainer, "torchvision", None):
        provenance["torchvision"] = trainer.torchvision
    write_json(path / "config.json", {"kind": "anchor", "config": config, "provenance": provenance,
                                      "data": provenance_data})
    log(f"{anchor}: training on {config['train_images']} {DATASET} images from {config['data_dir']} "
        f"({_data_label(provenance_data)}), seed {seed}, {trainer.device.type} {precision} -> {path}")
    with tempfile.TemporaryDirectory(prefix="aacn-anchor-") as tmp:
        write_airbench_data(data, tmp)
        outcome = trainer(anchor, Path(tmp), seed)
    _write_metrics(path / "metrics.jsonl", outcome.metrics)
    results = {**_results(outcome, config, wall_time_s=time.perf_counter() - start), "provenance": provenance,
               "data": provenance_data}
    write_json(path / "results.json", results)
    tta = "" if outcome.test_acc_tta is None else f", {outcome.test_acc_tta:.2f}% with flip TTA"
    log(f"{anchor}: {outcome.test_acc:.2f}% test{tta}, trained in {outcome.train_time_s:.1f} s "
        f"-> {path / 'results.json'}")
    return AnchorRun("trained", path, results)


def _data_label(data: Any) -> str:
    label = data.get("label") if isinstance(data, dict) else None
    return str(label) if label else "data provenance unknown"


def _stored_anchor_config(path: Path) -> Any:
    """The ``config.json`` already in ``path`` (``None`` if there is none), once ``path`` is known to be a usable
    output folder that holds no other kind of record."""
    stored = _read(path / "config.json") if (path / "config.json").is_file() else None
    if stored is not None and (not isinstance(stored, dict) or stored.get("kind") != "anchor"):
        raise UserError(f"{path} holds a record that is not an anchor's; choose another --out")
    check_output_dir(path, "--out")
    return stored


def _check_same_record(path: Path, stored: dict[str, Any], config: dict[str, Any], data: Any) -> None:
    """Refuse a finished record in ``path`` whose config or data differ from the requested ones."""
    differences = record_differences(stored, config, data)
    if differences:
        raise UserError(f"{path} holds a finished anchor record with another config ("
                        f"{'; '.join(differences)}); pass --overwrite to retrain or choose another --out")


def _results(outcome: AnchorOutcome, config: dict[str, Any], *, wall_time_s: float) -> dict[str, Any]:
    """``results.json`` of a trained anchor, without its provenance and data."""
    return {
        "kind": "anchor", "anchor": config["anchor"], "dataset": DATASET, "seed": config["seed"],
        "train_images": config["train_images"], "test_images": config["test_images"],
        "test_acc": outcome.test_acc, "test_acc_tta": outcome.test_acc_tta,
        "test_acc_tta_airbench": outcome.test_acc_tta_airbench, "train_time_s": outcome.train_time_s,
        "wall_time_s": wall_time_s, "params": outcome.params,
        "epochs": outcome.settings.get("opt", {}).get("train_epochs", len(outcome.metrics)),
        "airbench_settings": outcome.settings, "config": config,
    }
