"""The package's shape, read from the source: layers point down, modules import what they use from the module
that defines it (never through a package's ``__init__``), and the version comes from the installed metadata."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aacn

SRC = Path(__file__).resolve().parents[1] / "src"

# Layers, lowest first: a module may import from its own layer and those below, never from one above.
LAYERS = {
    "aacn": 0, "aacn.errors": 0, "aacn.files": 0,
    "aacn.options": 1, "aacn.config": 1, "aacn.flags": 1, "aacn.nn": 1, "aacn.models": 1, "aacn.data": 1,
    "aacn.provenance": 1,
    "aacn.train": 2,
    "aacn.inference": 3, "aacn.export": 3,
    "aacn.viz": 4,
    "aacn.experiments": 5,
    "aacn.cli": 6, "aacn.__main__": 6,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "aacn").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _layer(name: str) -> int:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in {Path(__file__).name}")


def _imports(name: str, source: str, *, package: bool = False) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every aacn import in module ``name``'s ``source`` (module level and inside
    functions alike); ``names`` is empty for ``import x``. Relative imports are resolved."""
    here = name if package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "aacn"]
        elif isinstance(node, ast.ImportFrom):
            base = here.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if module.split(".")[0] == "aacn":
                found.append((node.lineno, module, [a.name for a in node.names]))
    return found


def _upward(name: str, imports: list[tuple[int, str, list[str]]]) -> list[str]:
    """Imports of ``name`` from a layer above its own."""
    mine = _layer(name)
    bad = []
    for line, module, names in imports:
        targets = [f"{module}.{n}" if f"{module}.{n}" in MODULES else module for n in names] or [module]
        bad += [f"line {line}: {name} (layer {mine}) imports {t} (layer {_layer(t)})" for t in targets
                if _layer(t) > mine]
    return bad


def _through_packages(imports: list[tuple[int, str, list[str]]]) -> list[str]:
    """Names imported from a package's ``__init__`` instead of from the module that defines them."""
    bad = []
    for line, module, names in imports:
        through = [n for n in names if module in PACKAGES and f"{module}.{n}" not in MODULES and n != "__version__"]
        if through:
            bad.append(f"line {line}: {through} through package {module}")
    return bad


def _source_imports(name: str) -> list[tuple[int, str, list[str]]]:
    path = MODULES[name]
    return _imports(name, path.read_text(encoding="utf-8"), package=path.name == "__init__.py")


def test_every_module_imports_only_its_own_layer_or_below():
    bad = [f"{MODULES[name].relative_to(SRC)} {v}" for name in MODULES for v in _upward(name, _source_imports(name))]
    assert not bad, "\n".join(bad)


def test_modules_import_from_the_defining_module_not_through_a_package():
    bad = [f"{MODULES[name].relative_to(SRC)} {v}" for name in MODULES
           for v in _through_packages(_source_imports(name))]
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_forbid():
    code = ("from aacn import inference\nfrom ..train.loop import run\nfrom aacn.nn import AAConv2d\n"
            "from aacn.nn import functional\nimport aacn.viz.curves\n")
    imports = _imports("aacn.models.fake", code)
    assert [m for _, m, _ in imports] == ["aacn", "aacn.train.loop", "aacn.nn", "aacn.nn", "aacn.viz.curves"]
    upward = _upward("aacn.models.fake", imports)
    assert [v.split(" imports ")[1].split()[0] for v in upward] == ["aacn.inference", "aacn.train.loop",
                                                                     "aacn.viz.curves"]
    assert _through_packages(imports) == ["line 3: ['AAConv2d'] through package aacn.nn"]


def test_experiment_presets_do_not_read_reports():
    reports = ("aacn.experiments.report", "aacn.experiments.rows", "aacn.experiments.tables")
    assert not any(m.startswith(reports) for _, m, _ in _source_imports("aacn.experiments.presets"))


def test_the_version_is_the_installed_distributions(tmp_path):
    assert aacn.__version__ == importlib.metadata.version("aacn")
    # Not installed (no site-packages, no metadata): a source tree still imports, with a version that says so. The
    # package is copied alone, because an editable install may leave aacn.egg-info beside it in src/.
    shutil.copytree(SRC / "aacn", tmp_path / "aacn")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    code = "import aacn, sys; print(aacn.__version__, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.split() == ["0+unknown", "False"]
