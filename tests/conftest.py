"""Test-wide setup: 8 simulated CPU devices, the compilation cache and grain's absl flags,
before anything imports jax."""

import os
from pathlib import Path

from exectune_jax.runtime import use_compilation_cache

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, as the CLI keeps it, for this process and the stage
# processes tests start: most of the suite's time is XLA compiling the same small programs again
# (each run builds its jitted steps afresh), and reading one back costs a fraction of that. Every
# program is kept, however quick to compile.
use_compilation_cache()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from absl import flags

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import logging

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The real GSM8K files beside the checkout; tests that need them skip where absent."""
    path = SHARED_DATA / "gsm8k"
    if not (path / "test.jsonl").exists():
        pytest.skip("GSM8K files not found beside the checkout (../shared/data/gsm8k)")
    return path


# pytest-xdist (pyproject's addopts: -n auto --dist loadscope) sends each module to one worker,
# whole, so its module fixtures are built once. The modules below go out first, longest first,
# so that no long one starts when the other worker is about to finish; the tests that read the
# session's quick demo (the `quick_demo` fixture) go with tests/test_demo.py, so the demo runs once.
FIRST = ("tests/test_demo.py", "tests/train/test_sft.py", "tests/train/test_grpo.py",
         "tests/test_notebooks.py", "tests/sim/test_guide.py", "tests/test_estimate.py",
         "tests/test_evaluate.py", "tests/test_parallel.py", "tests/test_multiprocess.py")
WITH_THE_DEMO = {"tests/test_notebooks.py::test_quickstart": "tests/test_demo.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for prefix, scope in WITH_THE_DEMO.items():
                if nodeid.startswith(prefix):
                    return scope
            return super()._split_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            first = next((scope for scope in FIRST if scope in self.workqueue), None)
            if first is not None:
                self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return Scheduler(config, log)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """One clean `exectune demo --quick` run for the session: (its directory, the finished
    process). Every test that reads a demo's outputs reads this one; a test that runs a demo
    again does so in a copy (`demo_runs.copy_finished`), never in this directory."""
    from demo_runs import run_demo

    out = tmp_path_factory.mktemp("demo") / "clean"
    return out, run_demo(out)


@pytest.fixture(autouse=True)
def package_logger_as_found():
    """`cli.main` sets the package logger up for a terminal; the next test gets it as it was."""
    logger = logging.getLogger("exectune_jax")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
