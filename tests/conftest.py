"""Test-wide setup: 8 simulated CPU devices and grain's absl flags, before anything imports jax."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The real GSM8K files beside the checkout; tests that need them skip where absent."""
    path = SHARED_DATA / "gsm8k"
    if not (path / "test.jsonl").exists():
        pytest.skip("GSM8K files not found beside the checkout (../shared/data/gsm8k)")
    return path


@pytest.fixture(autouse=True)
def package_logger_as_found():
    """`cli.main` sets the package logger up for a terminal; the next test gets it as it was."""
    logger = logging.getLogger("exectune_jax")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
