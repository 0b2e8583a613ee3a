"""What a run does with its output folder: start fresh, continue, or report that it has finished.

The rules never reuse a stale result and never continue a run under a different configuration:

* ``--out`` must be a writable folder; that is checked before any data is loaded or model built.
* Without ``--resume`` or ``--overwrite``, a folder that holds a run (finished or not) is refused.
* ``--overwrite`` discards what the folder holds.
* ``--resume`` on a finished run returns its results if its ``config.json`` equals the requested config
  (ignoring fields that cannot change a result, see :meth:`aacn.config.RunConfig.differences`) and its recorded
  recipe equals the recipe's declaration now (:func:`aacn.train.recipes.recipe_differences`), and is refused,
  naming the differing fields, otherwise.
* A record that is not consistent (:mod:`aacn.train.record_check`: a ``config.json`` missing, incomplete or
  disagreeing with ``results.json``) is refused, naming the file and the field.
* ``--resume`` on an unfinished run compares the saved ``config.json`` (whether or not a checkpoint can be
  read) and then the newest checkpoint's config; either difference is refused, naming the fields. The data it loads
  must have the fingerprint recorded in ``config.json`` and the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aacn.config import RunConfig
from aacn.errors import UserError
from aacn.files import check_output_dir, read_json, remove_stale_temporaries
from aacn.train.recipes import recipe_differences
from aacn.train.record_check import complete_config, recipe_of, recorded_config, recorded_recipe
from aacn.train.records import RunDir


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
    check_output_dir(config.out, "--out")
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
    stored = read_json(run_dir.config_path) if run_dir.config_path.is_file() else {}
    if stored:
        check_same_config(run_dir, config, what="its config.json holds",
                          saved=complete_config(stored, run_dir.config_path),
                          recipe=recipe_of(stored, run_dir.config_path))
    _remove_temporaries(run_dir)
    data = stored.get("data") if isinstance(stored, dict) else None
    return Start(run_dir, "resume", recorded_data=data if isinstance(data, dict) else None)


def _remove_temporaries(run_dir: RunDir) -> None:
    for folder in (run_dir.path, run_dir.checkpoint_dir):
        remove_stale_temporaries(folder)


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
        stored = read_json(run_dir.config_path)
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
