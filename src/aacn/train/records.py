"""A run directory: the record of one training run, readable without the process that wrote it.

Layout::

    RUN/config.json          {"config": RunConfig fields, "info": model/world/recipe facts,
                              "recipe": the resolved recipe (aacn.train.recipes.resolved_recipe),
                              "provenance": code/software/device, "data": the data's label and fingerprint}
    RUN/metrics.jsonl        one JSON object per finished epoch
    RUN/checkpoints/epoch-0007.pt   (the newest ``checkpoint_keep`` are kept; see ``save_checkpoint``)
    RUN/tensorboard/         TensorBoard event files, with ``--tensorboard`` (see :mod:`aacn.train.tensorboard`)
    RUN/results.json         written once, when the run has finished (see :mod:`aacn.train.summary`)

Every file is written atomically through :func:`aacn.files.atomic_write` (temporary file in the same folder,
fsync, the umask's mode, rename), so a crash, a full disk or SIGKILL leaves either the old file or the new one,
never a half-written file that looks valid. JSON is strict: a value that was not measured is ``null``, never
``NaN``. Checkpoints hold only tensors and plain Python values, so ``torch.load(path, weights_only=True)``
loads them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from aacn import files
from aacn.errors import UserError

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
