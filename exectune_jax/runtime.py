"""Process-wide setup: what every process that runs a stage does once, before JAX or grain start.

The CLI, the demo's stage processes and Python callers (README, "From Python") share it; it sits
at the bottom of the package, so none of them imports another entry point for it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

COMPILATION_CACHE_BYTES = 4 << 30  # JAX evicts the least recently used programs beyond this


def prepare_runtime() -> None:
    """Process-wide setup every command needs before JAX or grain start."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    use_compilation_cache()
    # JAX models need no PyTorch; transformers' advice that it is missing is only noise
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    configure_logging()


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache, where every process of the package keeps it (unless
    the environment says otherwise), set before JAX starts.

    Every process also caps the cache's size, because the cap is what turns on JAX's file lock
    and its per-entry access times: stages that run side by side (the demo's) then never read an
    entry another one is half way through writing, and all processes keep the cache in one
    format. JAX (0.10) fails every write to a capped cache that holds an entry without an access
    time, so one uncapped process would leave every later capped one compiling from scratch.
    """
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
        Path.home() / ".cache" / "exectune-jax" / "xla"
    )
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(COMPILATION_CACHE_BYTES))


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
