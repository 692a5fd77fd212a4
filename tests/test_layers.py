"""The package's layers, checked by import-linter against the contracts in pyproject.toml
([tool.importlinter]): a module imports only from its own layer or below, every top-level module
has a layer, and no sibling modules import each other in a cycle. Function-local imports count
like any other: a lazy import is still a dependency.
"""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# import-linter's own entry point, run from the directory whose pyproject.toml and package it checks
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # one violation per line, however the report is wrapped
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_package_keeps_its_contracts_and_ignores_no_import():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert sorted(c["type"] for c in contracts) == ["acyclic_siblings", "layers"]
    assert not any(key.startswith(("ignore_imports", "exhaustive_ignores")) for c in contracts for key in c)
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(REPO / "exectune_jax", tmp_path / "exectune_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_a_function_local_import_that_points_up_breaks_the_layers(package):
    with (package / "exectune_jax" / "layout.py").open("a") as f:
        f.write("\n\ndef _upward():\n    from exectune_jax import cli\n")
    proc = lint(package)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "exectune_jax.layout is not allowed to import exectune_jax.cli" in proc.stdout


def test_a_function_local_import_that_closes_a_cycle_between_siblings_breaks_the_contract(package):
    with (package / "exectune_jax" / "sim" / "truth.py").open("a") as f:  # the server imports truth
        f.write("\n\ndef _back():\n    from exectune_jax.sim import server\n")
    proc = lint(package)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no cycles between sibling modules BROKEN" in proc.stdout


def test_a_top_level_module_without_a_layer_breaks_the_layers(package):
    (package / "exectune_jax" / "stray.py").write_text('"""A module nobody placed."""\n')
    proc = lint(package)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "exectune_jax.stray" in proc.stdout
