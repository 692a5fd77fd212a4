"""What an installed package promises: a version, type information, quiet imports."""

import os
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import exectune_jax

REPO = Path(__file__).resolve().parents[1]


def test_version_comes_from_the_package_metadata():
    try:
        expected = version("exectune-jax")
    except PackageNotFoundError:  # a checkout on the path: the fallback
        expected = "0+unknown"
    assert exectune_jax.__version__ == expected


def test_the_package_ships_py_typed():
    assert (REPO / "exectune_jax" / "py.typed").is_file()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py.typed" in data["tool"]["setuptools"]["package-data"]["exectune_jax"]


def test_cli_silences_transformers_advice_that_pytorch_is_missing():
    """Without torch (a JAX-only install), the CLI's runtime keeps transformers quiet."""
    hide_torch = ("import sys; sys.modules['torch'] = None; import importlib.util as u; "
                  "find = u.find_spec; u.find_spec = lambda n, *a: None if n == 'torch' "
                  "else find(n, *a); ")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)
    run = [sys.executable, "-c"]
    plain = subprocess.run([*run, hide_torch + "import transformers"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert "PyTorch was not found" in plain.stderr  # the warning this test is about
    quiet = subprocess.run(
        [*run, hide_torch + "from exectune_jax.runtime import prepare_runtime; prepare_runtime(); "
                            "import transformers"],
        env=env, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert "PyTorch was not found" not in quiet.stderr
