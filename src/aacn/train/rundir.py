"""A run directory: the record of one training run, readable without the process that wrote it, and the rules
by which a run starts, continues or is reused from it.

Layout::

    RUN/config.json          {"config": RunConfig fields, "info": model/world/recipe facts,
                              "recipe": the resolved recipe (aacn.train.recipes.resolved_recipe),
                              "provenance": code/software/device, "data": the data's label and fingerprint}
    RUN/metrics.jsonl        one JSON object per finished epoch (:func:`epoch_row`)
    RUN/checkpoints/epoch-0007.pt   (the newest ``checkpoint_keep`` are kept; see :meth:`RunDir.save_checkpoint`)
    RUN/tensorboard/         TensorBoard event files, with ``--tensorboard`` (see :mod:`aacn.train.tensorboard`)
    RUN/results.json         written once, when the run has finished (:func:`summarize`)

**Files** (:class:`RunDir`). Every file is written atomically through :func:`aacn.files.atomic_write` (temporary
file in the same folder, fsync, the umask's mode, rename), so a crash, a full disk or SIGKILL leaves either the
old file or the new one, never a half-written file that looks valid. JSON is strict: a value that was not
measured (no validation split with ``--val-size 0``; TTA not asked for) is ``null``, never ``NaN``. Every record
is read through :func:`aacn.files.read_json`, which bounds size, depth and integers.

**Checkpoints** hold the whole training state (:func:`training_state`): model, optimiser, scheduler, grad-scaler
and RNG state, the position (finished epochs, and steps into the next epoch for a checkpoint taken on Ctrl-C or
SIGTERM), the run time so far, the partial training sums of a mid-epoch checkpoint, the run's config and
resolved recipe and its data's fingerprints. Every value is a tensor or a plain Python value, so
``torch.load(path, weights_only=True)`` loads them, and a crafted file cannot run code.

**A record is used only when it is consistent** (reused by ``train --resume``, ``reproduce`` and ``sweep``,
continued by ``--resume``, tabulated by ``report`` and ``--publish``, loaded by ``evaluate``, ``export`` and
``load_model``); otherwise it is refused with one :class:`~aacn.errors.UserError` naming the file and the field:

* ``config.json`` must hold every option that can change a result (:data:`aacn.config.RESULT_NEUTRAL` options
  may be absent), in any format :meth:`aacn.config.RunConfig.from_dict` reads. Nothing is filled with a
  default: a record missing ``epochs`` (``optim.epochs`` in format 2) is refused, not read as 10 epochs. The
  older flat form 1 (no ``"format"``) must hold :data:`LEGACY_REQUIRED`; its ``model_kwargs`` were
  ``create_model`` keyword arguments, whose defaults were the model's, so they may be sparse.
* A finished run (``results.json``) must have its ``config.json``; the config that ``results.json`` holds must
  equal it (up to result-neutral options), and the model, dataset, epochs, parameter count, resolved recipe and
  data fingerprints that both files record must agree. A config edited by hand, a deleted ``config.json`` or
  files of two runs mixed together are refused.

**How a run begins** (:func:`prepare_run_dir`). The rules never reuse a stale result and never continue a run
under a different configuration:

* ``--out`` must be a writable folder; that is checked before any data is loaded or model built.
* Without ``--resume`` or ``--overwrite``, a folder that holds a run (finished or not) is refused.
* ``--overwrite`` discards what the folder holds.
* ``--resume`` on a finished run returns its results if its ``config.json`` equals the requested config
  (ignoring fields that cannot change a result, see :meth:`aacn.config.RunConfig.differences`) and its recorded
  recipe equals the recipe's declaration now (:func:`aacn.train.recipes.recipe_differences`), and is refused,
  naming the differing fields, otherwise.
* ``--resume`` on an unfinished run compares the saved ``config.json`` (whether or not a checkpoint can be
  read) and then the newest checkpoint's config; either difference is refused, naming the fields. The data it
  loads must have the fingerprint recorded in ``config.json`` and the checkpoint (:func:`check_same_data`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aacn import files
from aacn.config import CONFIG_FORMAT, FORMAT2_PATHS, OPTIONS, RESULT_NEUTRAL, RunConfig
from aacn.errors import OptionError, UserError
from aacn.train import distributed
from aacn.train.recipes import recipe_differences
from aacn.train.step import Learner

__all__ = [
    "RunDir", "CHECKPOINT_FORMAT",
    "epoch_row", "summarize", "summarize_partial",
    "LEGACY_REQUIRED", "complete_config", "check_results", "check_record", "check_finished", "recorded_config",
    "recorded_recipe", "recipe_of", "run_differences",
    "Position", "training_state", "restore",
    "Start", "prepare_run_dir", "check_same_config", "check_same_data",
]

CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^epoch-(\d{4,})(?:-step-(\d{6,}))?\.pt$")


class RunDir:
    """The files of one run. Only rank 0 of a distributed run writes; every rank may read."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.results_path = self.path / "results.json"
        self.checkpoint_dir = self.path / "checkpoints"
        self.tensorboard_dir = self.path / "tensorboard"

    # ----------------------------------------------------------------------------------------- state
    def is_finished(self) -> bool:
        return self.results_path.is_file()

    def has_started(self) -> bool:
        return self.config_path.is_file() or self.metrics_path.is_file() or any(self.checkpoints())

    def read_json(self, path: Path) -> Any:
        try:
            return files.read_json(path)
        except FileNotFoundError:
            raise UserError(f"{path} does not exist; is {self.path} a finished 'aacn train' run?") from None

    def read_config(self) -> dict[str, Any]:
        return self.read_json(self.config_path)

    def read_results(self) -> dict[str, Any]:
        return self.read_json(self.results_path)

    # --------------------------------------------------------------------------------------- writing
    def clear(self) -> None:
        """Remove what an earlier run left here (used by ``--overwrite``)."""
        for path in (self.config_path, self.metrics_path, self.results_path):
            path.unlink(missing_ok=True)
        for ckpt in self.checkpoints():
            ckpt.unlink(missing_ok=True)
        if self.tensorboard_dir.is_dir():  # TensorBoard event files of the earlier run
            for events in self.tensorboard_dir.glob("events.out.tfevents.*"):
                events.unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any], info: dict[str, Any], *, recipe: dict[str, Any] | None = None,
                     provenance: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> None:
        record = {"config": config, "info": info, "recipe": recipe, "provenance": provenance, "data": data}
        files.write_json(self.config_path, {k: v for k, v in record.items() if k != "recipe" or v is not None})

    def write_results(self, results: dict[str, Any]) -> None:
        files.write_json(self.results_path, results)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in files.read_text_bounded(self.metrics_path).splitlines():
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a killed writer: everything before it is good
                except (RecursionError, ValueError):
                    pass  # refused below, naming the file
                rows.append(files.loads_json(line, f"{self.metrics_path} line {len(rows) + 1}"))
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite the whole metrics file (atomically); used to append and to cut it back on resume."""
        lines = [json.dumps(files.strict_json(r), allow_nan=False) + "\n" for r in rows]
        files.atomic_write(self.metrics_path, lambda fh: fh.writelines(lines))

    # ----------------------------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [
            ((int(m.group(1)), int(m.group(2) or 0)), p)
            for p in self.checkpoint_dir.iterdir()
            if (m := _CKPT_RE.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def save_checkpoint(self, state: dict[str, Any], epoch: int, step: int = 0, keep: int = 2) -> Path:
        """Atomically write ``state`` as ``checkpoints/epoch-NNNN.pt``; then prune all but the newest ``keep``.

        ``epoch`` counts finished epochs; ``step`` > 0 marks a checkpoint taken ``step`` batches into the next
        epoch (on Ctrl-C or SIGTERM), named ``epoch-NNNN-step-SSSSSS.pt``.

        Pruning happens only after the new file is safely in place, so a failure at any point leaves at least
        the previous checkpoint loadable.
        """
        name = f"epoch-{epoch:04d}" + (f"-step-{step:06d}" if step else "")
        path = self.checkpoint_dir / f"{name}.pt"
        files.atomic_write(path, lambda fh: torch.save({"format": CHECKPOINT_FORMAT, **state}, fh), binary=True)
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def final_checkpoint_path(self, epochs: int) -> Path:
        """Where a run of ``epochs`` epochs keeps its final model: ``checkpoints/epoch-NNNN.pt``."""
        return self.checkpoint_dir / f"epoch-{epochs:04d}.pt"

    def load_checkpoint(self, path: Path, map_location: Any = "cpu") -> dict[str, Any]:
        """The checkpoint in ``path``, or a one-line :class:`UserError` saying which file is bad and what it is.

        Never falls back to another file: callers that may (``--resume``) use :meth:`latest_checkpoint`.
        """
        if not path.exists():
            raise UserError(f"{path} does not exist; the run's checkpoints were removed")
        if not path.is_file():
            raise UserError(f"{path} is not a file but a {'folder' if path.is_dir() else 'special file'}; the run's "
                            "checkpoints are damaged")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # truncated zip, crafted pickle, ...: weights_only never runs its code
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise UserError(f"{path} is not a loadable checkpoint ({type(exc).__name__}: {reason}); it is truncated "
                            "or was not written by aacn: retrain, or restore the file") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT \
                or not isinstance(state.get("model"), dict):
            raise UserError(f"{path} loads but is not an aacn checkpoint (no format {CHECKPOINT_FORMAT} state with "
                            "model weights); retrain, or restore the file")
        return state

    def latest_checkpoint(self, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads; truncated or corrupt ones are skipped with a warning."""
        for path in reversed(self.checkpoints()):
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except Exception as exc:  # truncated zip, bad pickle, ...: never load it
                warnings.warn(f"skipping unreadable checkpoint {path} ({type(exc).__name__})", stacklevel=2)
                continue
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                warnings.warn(f"skipping {path}: not an aacn checkpoint", stacklevel=2)
                continue
            return path, state
        return None


# ---------------------------------------------------------------------------------------- what the records hold
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


# ------------------------------------------------------------------------------ whether a record can be trusted
LEGACY_REQUIRED = ("model", "dataset", "epochs", "batch_size", "recipe", "augment", "normalize", "subset",
                   "val_size", "split_seed", "seed", "amp")
"""Options a flat (pre-format-2) config must name: every one it held that can change a result."""

_FIX = "restore the record, or retrain with --overwrite"


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _missing(data: Mapping[str, Any], path: Path, prefix: str) -> list[str]:
    """Result-changing options absent from the config ``data`` (format 3, 2 or the older flat form 1)."""
    if "format" not in data:
        return [name for name in LEGACY_REQUIRED if name not in data]
    result_changing = [name for name in OPTIONS if name not in RESULT_NEUTRAL]
    if data["format"] == CONFIG_FORMAT:
        return [name for name in result_changing if name not in data]
    if data["format"] != 2:
        return []  # RunConfig.from_dict refuses any other format, saying why
    missing = []
    for name in result_changing:
        node: Any = data
        where = FORMAT2_PATHS[name]
        for depth, part in enumerate(where):
            if not isinstance(node, Mapping):
                raise UserError(f"{path}: field {prefix}{'.'.join(where[:depth])} is {_type_name(node)}, not an "
                                f"object; {_FIX}")
            if part not in node:
                missing.append(".".join(where[:depth + 1]))
                break
            node = node[part]
    return list(dict.fromkeys(missing))


def complete_config(stored: Any, path: str | Path, *, key: str = "config") -> RunConfig:
    """The :class:`RunConfig` in ``stored`` (the content of ``path``: its ``key`` entry, or the whole object).

    Raises :class:`UserError` naming ``path`` and the field when it is no object, misses an option that can
    change a result, or holds a value no run can have.
    """
    path = Path(path)
    if not isinstance(stored, Mapping):
        raise UserError(f"{path} holds {_type_name(stored)}, not a JSON object; {_FIX}")
    if stored.get("kind") == "anchor":
        raise UserError(f"{path} is an anchor record (a public baseline trained by its own code), not an 'aacn "
                        "train' run; pass a folder written by 'aacn train'")
    data = stored.get(key, stored) if key else stored
    prefix = f"{key}." if key in stored else ""
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: field {key!r} is {_type_name(data)}, not an object; {_FIX}")
    missing = _missing(data, path, prefix)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{path}: field {prefix}{missing[0]} is missing{more}; an incomplete record is never "
                        f"filled with defaults: {_FIX}")
    try:
        return RunConfig.from_dict(data)
    except OptionError as exc:
        name = exc.option
        dotted = ".".join(FORMAT2_PATHS[name]) if name in OPTIONS and data.get("format") == 2 else name
        raise UserError(f"{path}: field {prefix}{dotted}: {exc}; {_FIX}") from None
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise UserError(f"{path}: field {key!r} is malformed ({type(exc).__name__}: {exc}); {_FIX}") from None


def _fingerprint(record: Mapping[str, Any]) -> Any:
    data = record.get("data")
    return data.get("fingerprint") if isinstance(data, Mapping) else None


def check_results(run: RunDir, config: RunConfig, stored: Mapping[str, Any], results: Any) -> None:
    """Refuse a ``results.json`` (content ``results``) that disagrees with ``config.json`` (``stored``, parsed
    as ``config``): its config, model, dataset, epochs, parameter count or data fingerprints."""
    where = run.results_path
    if not isinstance(results, Mapping):
        raise UserError(f"{where} holds {_type_name(results)}, not a JSON object; {_FIX}")
    disagree = f"{where} and {run.config_path} disagree"
    if results.get("config") is not None:
        finished = complete_config(results, where)
        diffs = finished.differences(config)
        if diffs:
            raise UserError(f"{disagree} ({'; '.join(diffs)}, results.json's first): one was edited or comes "
                            f"from another run; {_FIX}")
    for key, expected in (("model", config.model), ("dataset", config.dataset), ("epochs", config.epochs)):
        if key in results and results[key] != expected:
            raise UserError(f"{disagree}: field {key} is {results[key]!r} in results.json, {expected!r} in "
                            f"config.json; {_FIX}")
    info = stored.get("info")
    params = info.get("params") if isinstance(info, Mapping) else None
    if params is not None and results.get("params") is not None and params != results["params"]:
        raise UserError(f"{disagree}: field params is {results['params']!r} in results.json, {params!r} in "
                        f"config.json's info; {_FIX}")
    recipe, finished_recipe = recipe_of(stored, run.config_path), recipe_of(results, where)
    if recipe is not None and finished_recipe is not None and recipe != finished_recipe:
        raise UserError(f"{disagree}: field recipe differs (the resolved recipe each records); {_FIX}")
    mine, theirs = _fingerprint(stored), _fingerprint(results)
    if mine is not None and theirs is not None and mine != theirs:
        raise UserError(f"{disagree}: field data.fingerprint differs (trained on other images than recorded); "
                        f"{_FIX}")


def recipe_of(stored: Any, path: str | Path) -> Mapping[str, Any] | None:
    """The resolved recipe a record (``stored``, the content of ``path``) holds in its ``"recipe"`` field; ``None``
    for a record written before recipes were recorded, which is compared by its recipe's name alone."""
    recipe = stored.get("recipe") if isinstance(stored, Mapping) else None
    if recipe is not None and not isinstance(recipe, Mapping):
        raise UserError(f"{path}: field recipe is {_type_name(recipe)}, not an object; {_FIX}")
    return recipe


def check_record(run: RunDir, stored: Any, results: Any | None) -> RunConfig:
    """The config of a training run's record already read (``config.json`` as ``stored``, ``results.json`` as
    ``results`` or ``None`` if unfinished), once known complete and consistent."""
    config = complete_config(stored, run.config_path)
    if results is not None:
        check_results(run, config, stored, results)
    return config


def check_finished(run: RunDir) -> RunConfig:
    """The config of the finished run in ``run``, once its record is known consistent (see the module doc)."""
    if not run.config_path.is_file():
        raise UserError(f"{run.results_path} has no config.json beside it (was it deleted?): the record cannot be "
                        f"checked; {_FIX}")
    return check_record(run, files.read_json(run.config_path), files.read_json(run.results_path))


def recorded_config(run: RunDir) -> RunConfig | None:
    """The config the run in ``run`` was made with: checked as :func:`check_finished` when it has finished,
    complete when it has not; ``None`` when there is no ``config.json`` (and no ``results.json``)."""
    if run.results_path.exists():
        return check_finished(run)
    if run.config_path.exists():
        return complete_config(files.read_json(run.config_path), run.config_path)
    return None


def recorded_recipe(run: RunDir) -> Mapping[str, Any] | None:
    """The resolved recipe ``config.json`` in ``run`` records; ``None`` without one (no file, or an older record)."""
    return recipe_of(files.read_json(run.config_path), run.config_path) if run.config_path.is_file() else None


def run_differences(run: RunDir, config: RunConfig) -> list[str]:
    """How the run recorded in ``run`` differs from ``config`` in anything that can change a result: its options
    (:meth:`RunConfig.differences`), then its recipe's fields as declared now
    (:func:`aacn.train.recipes.recipe_differences`). Empty when ``run`` holds no record; a record that is not
    consistent is refused (:func:`recorded_config`)."""
    saved = recorded_config(run)
    return [] if saved is None else saved.differences(config) + recipe_differences(recorded_recipe(run), config)


# --------------------------------------------------------------------------------------------- checkpoint state
@dataclass
class Position:
    """Where training (re)starts: ``epoch`` finished epochs, ``step`` batches into the next one.

    ``partial``: this rank's ``(loss * n, correct, n)`` over those ``step`` batches (a mid-epoch checkpoint
    holds all ranks' sums together; rank 0 takes them); ``resumed_images``: how many images they were (not
    timed again); ``elapsed``: run time so far, in seconds.
    """

    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    partial: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    resumed_images: float = 0.0


def training_state(learner: Learner, config: RunConfig, *, epoch: int, step: int, sums: list[float] | None,
                   elapsed: float, data: dict[str, Any] | None = None,
                   recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint of ``learner`` after ``epoch`` epochs and ``step`` batches of the next; ``data``: the
    provenance of the images it trains on (label and fingerprints), ``recipe``: the resolved recipe it trains
    with (:func:`aacn.train.recipes.resolved_recipe`), both compared when the run resumes."""
    state = {
        "model": learner.raw_model.state_dict(), "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(), "scaler": learner.scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(), "epoch": epoch, "step": step, "elapsed": elapsed,
        "partial": list(sums) if sums is not None else [0.0, 0.0, 0.0], "config": config.to_dict(),
    }
    if data is not None:
        state["data"] = data
    if recipe is not None:
        state["recipe"] = recipe
    if learner.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(learner.device)
    return state


def restore(learner: Learner, state: dict[str, Any], ctx: distributed.Context) -> Position:
    """Load ``state`` into ``learner`` (and the RNGs); return the position it was taken at."""
    learner.raw_model.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"].cpu())
    if learner.device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"].cpu(), learner.device)
    saved = [float(v) for v in state["partial"]]
    return Position(epoch=int(state["epoch"]), step=int(state["step"]), elapsed=float(state["elapsed"]),
                    partial=saved if ctx.is_main else [0.0, 0.0, 0.0], resumed_images=saved[2])


# --------------------------------------------------------------------------------------------- how a run begins
@dataclass
class Start:
    """How a run begins: ``action`` is ``"fresh"``, ``"resume"`` or ``"done"`` (``results`` then holds the
    finished run's results)."""

    run_dir: RunDir
    action: str
    results: dict[str, Any] | None = None
    recorded_data: dict[str, Any] | None = None  # what config.json said about the data of a resumed run


def prepare_run_dir(config: RunConfig, *, resume: bool, overwrite: bool) -> Start:
    """Check ``config.out`` and decide what the run does with it (see the module docstring).

    Call it holding the folder's lock (:func:`aacn.train.lock.run_lock`): it removes the temporary files that
    interrupted atomic writes left when the run resumes or is overwritten.
    """
    files.check_output_dir(config.out, "--out")
    run_dir = RunDir(config.out)
    if overwrite:
        _remove_temporaries(run_dir)
        return Start(run_dir, "fresh")
    if run_dir.is_finished():
        if not resume:
            raise UserError(f"{run_dir.path} already holds a finished run; pass --resume to keep it, --overwrite "
                            "to train again, or choose another --out")
        check_same_config(run_dir, config, what="it finished with", saved=recorded_config(run_dir),
                          recipe=recorded_recipe(run_dir))
        return Start(run_dir, "done", run_dir.read_results())
    if not run_dir.has_started():
        if resume:
            _remove_temporaries(run_dir)
        return Start(run_dir, "resume" if resume else "fresh")
    if not resume:
        raise UserError(f"{run_dir.path} holds an unfinished run; pass --resume to continue it or --overwrite to "
                        "start over")
    stored = files.read_json(run_dir.config_path) if run_dir.config_path.is_file() else {}
    if stored:
        check_same_config(run_dir, config, what="its config.json holds",
                          saved=complete_config(stored, run_dir.config_path),
                          recipe=recipe_of(stored, run_dir.config_path))
    _remove_temporaries(run_dir)
    data = stored.get("data") if isinstance(stored, dict) else None
    return Start(run_dir, "resume", recorded_data=data if isinstance(data, dict) else None)


def _remove_temporaries(run_dir: RunDir) -> None:
    for folder in (run_dir.path, run_dir.checkpoint_dir):
        files.remove_stale_temporaries(folder)


def check_same_config(run_dir: RunDir, config: RunConfig, *, what: str,
                      saved: RunConfig | dict[str, Any] | None = None, recipe: Any = None) -> None:
    """Refuse to go on with ``config`` where the run in ``run_dir`` was made with a different one, or with a
    recipe declared differently then (its resolved fields, when recorded).

    ``saved``: the config to compare with (a checkpoint's dict, or a RunConfig already read from the record),
    and ``recipe`` the resolved recipe recorded with it (``None``: none recorded, the name alone is compared);
    by default the run's complete ``config.json`` and its recipe (nothing to compare when there is none).
    """
    if saved is None:
        if not run_dir.config_path.is_file():
            return
        stored = files.read_json(run_dir.config_path)
        previous = complete_config(stored, run_dir.config_path)
        recipe = recipe_of(stored, run_dir.config_path)
    elif isinstance(saved, RunConfig):
        previous = saved
    else:
        previous = RunConfig.from_dict(saved)
    diffs = previous.differences(config) + recipe_differences(recipe if isinstance(recipe, dict) else None, config)
    if diffs:
        raise UserError(
            f"cannot resume {run_dir.path}: {what} a different config ({'; '.join(diffs)}); rerun with the same "
            "settings, or use --overwrite / another --out"
        )


def check_same_data(run_dir: RunDir, recorded: Any, loaded: Mapping[str, Any] | None, where: str) -> None:
    """Refuse to resume on images other than those the run trained on: ``recorded`` is the data provenance a
    record holds (``where`` says which, for the message), ``loaded`` that of the data loaded now; their
    fingerprints must agree where both have one."""
    then = recorded.get("fingerprint") if isinstance(recorded, dict) else None
    now = (loaded or {}).get("fingerprint")
    if not isinstance(then, dict) or not isinstance(now, dict) or then == now:
        return
    splits = [k for k in sorted(set(then) | set(now), key=str) if then.get(k) != now.get(k)]
    first = splits[0]
    raise UserError(f"cannot resume {run_dir.path}: the data loaded now are not those {where} (fingerprint of "
                    f"{', '.join(map(str, splits))}: {str(then.get(first))[:12]} recorded, {str(now.get(first))[:12]} "
                    "now); pass the --data-dir (and data options) it trained with, or --overwrite", all_ranks=True)
