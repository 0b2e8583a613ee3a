"""Whether a run directory's record can be trusted: a complete ``config.json``, and a ``results.json`` that agrees.

A record is used (reused by ``train --resume``, ``reproduce`` and ``sweep``, continued by ``--resume``,
tabulated by ``report`` and ``--publish``, loaded by ``evaluate``, ``export`` and ``load_model``) only when it is
consistent; otherwise it is refused with one :class:`~aacn.errors.UserError` naming the file and the field:

* ``config.json`` must hold every option that can change a result (:data:`aacn.config.RESULT_NEUTRAL` options
  may be absent). Nothing is filled with a default: a record missing ``optim.epochs`` is refused, not read as
  10 epochs. The older flat form (no ``"format"``) must hold :data:`LEGACY_REQUIRED`; its ``model_kwargs`` were
  ``create_model`` keyword arguments, whose defaults were the model's, so they may be sparse.
* A finished run (``results.json``) must have its ``config.json``; the config that ``results.json`` holds must
  equal it (up to result-neutral options), and the model, dataset, epochs, parameter count, resolved recipe and
  data fingerprints that both files record must agree. A config edited by hand, a deleted ``config.json`` or
  files of two runs mixed together are refused.

Everything is read through :func:`aacn.files.read_json`, which bounds size, depth and integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aacn.config import OPTIONS, RunConfig
from aacn.errors import OptionError, UserError
from aacn.files import read_json
from aacn.train.recipes import recipe_differences
from aacn.train.records import RunDir

__all__ = ["LEGACY_REQUIRED", "complete_config", "check_results", "check_record", "check_finished",
           "recorded_config", "recorded_recipe", "recipe_of", "run_differences"]

LEGACY_REQUIRED = ("model", "dataset", "epochs", "batch_size", "recipe", "augment", "normalize", "subset",
                   "val_size", "split_seed", "seed", "amp")
"""Options a flat (pre-format-2) config must name: every one it held that can change a result."""

_FIX = "restore the record, or retrain with --overwrite"


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _missing(data: Mapping[str, Any], path: Path, prefix: str) -> list[str]:
    """Result-changing options absent from the config ``data`` (format 2, or the older flat form)."""
    if "format" not in data:
        return [name for name in LEGACY_REQUIRED if name not in data]
    missing = []
    for opt in OPTIONS.values():
        if opt.neutral:
            continue
        node: Any = data
        for depth, part in enumerate(opt.path):
            if not isinstance(node, Mapping):
                where = ".".join(opt.path[:depth])
                raise UserError(f"{path}: field {prefix}{where} is {_type_name(node)}, not an object; {_FIX}")
            if part not in node:
                missing.append(".".join(opt.path[:depth + 1]))
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
        field = ".".join(OPTIONS[name].path) if name in OPTIONS and "format" in data else name
        raise UserError(f"{path}: field {prefix}{field}: {exc}; {_FIX}") from None
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
    for field, expected in (("model", config.model), ("dataset", config.dataset), ("epochs", config.epochs)):
        if field in results and results[field] != expected:
            raise UserError(f"{disagree}: field {field} is {results[field]!r} in results.json, {expected!r} in "
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
    return check_record(run, read_json(run.config_path), read_json(run.results_path))


def recorded_config(run: RunDir) -> RunConfig | None:
    """The config the run in ``run`` was made with: checked as :func:`check_finished` when it has finished,
    complete when it has not; ``None`` when there is no ``config.json`` (and no ``results.json``)."""
    if run.results_path.exists():
        return check_finished(run)
    if run.config_path.exists():
        return complete_config(read_json(run.config_path), run.config_path)
    return None


def recorded_recipe(run: RunDir) -> Mapping[str, Any] | None:
    """The resolved recipe ``config.json`` in ``run`` records; ``None`` without one (no file, or an older record)."""
    return recipe_of(read_json(run.config_path), run.config_path) if run.config_path.is_file() else None


def run_differences(run: RunDir, config: RunConfig) -> list[str]:
    """How the run recorded in ``run`` differs from ``config`` in anything that can change a result: its options
    (:meth:`RunConfig.differences`), then its recipe's fields as declared now
    (:func:`aacn.train.recipes.recipe_differences`). Empty when ``run`` holds no record; a record that is not
    consistent is refused (:func:`recorded_config`)."""
    saved = recorded_config(run)
    return [] if saved is None else saved.differences(config) + recipe_differences(recorded_recipe(run), config)
