"""Process-wide setup: what every process that runs a stage does once, before JAX or grain start.

The CLI, the demo's stage processes and Python callers (README, "From Python") share it; it sits
at the bottom of the package, so none of them imports another entry point for it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def prepare_runtime() -> None:
    """Process-wide setup every command needs before JAX or grain start."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
        Path.home() / ".cache" / "exectune-jax" / "xla"
    )
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    # JAX models need no PyTorch; transformers' advice that it is missing is only noise
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    configure_logging()


def configure_logging() -> None:
    """Once per process: the package's INFO lines (`resumed sft from step N`, skipped rows) go to
    stderr as plain lines; other libraries keep their own levels."""
    logger = logging.getLogger("exectune_jax")
    if any(getattr(h, "exectune", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.exectune = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
