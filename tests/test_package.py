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


def test_a_capped_process_keeps_writing_to_a_compilation_cache_the_cli_filled(tmp_path):
    """The CLI caps the compilation cache as tests and side-by-side stages do: JAX fails every
    write to a capped cache holding an entry an uncapped process wrote (no access time)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_MAX_SIZE"}
    env.update(PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(tmp_path),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
    program = ("import jax, jax.numpy as jnp; "
               "print(jax.jit(lambda x: jnp.sin(x) * {0})(jnp.ones(3)).block_until_ready())")
    cli = subprocess.run(
        [sys.executable, "-c", "from exectune_jax.runtime import prepare_runtime; "
                               "prepare_runtime(); " + program.format(2.0)],
        env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    written = set(tmp_path.glob("*-cache"))
    assert written
    capped = subprocess.run([sys.executable, "-c", program.format(3.0)], capture_output=True,
                            env={**env, "JAX_COMPILATION_CACHE_MAX_SIZE": str(1 << 30)}, text=True,
                            timeout=120)
    assert capped.returncode == 0, capped.stderr
    assert "Error writing persistent compilation cache" not in capped.stderr
    assert set(tmp_path.glob("*-cache")) > written  # the capped process added its program
