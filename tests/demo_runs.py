"""`exectune demo --quick` as a user runs it (a fresh process, one device), and copies of a
finished run that a later demo resumes instead of training again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_demo(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user has
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "exectune_jax.cli", "demo", "--quick", "--out", str(out),
           *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def copy_finished(run: Path, out: Path, entries: Iterable[str], named: str | None = None) -> Path:
    """`entries` of the finished demo `run` (stage directories or files) copied into `out`, each
    stage's config.yaml pointed at `out` (or at `named`, the run_dir the next demo is given for
    it, e.g. a relative one): a demo run there finds those stages finished (SFT at its last step
    returns at once, the base guide exists) and runs the others afresh."""
    out.mkdir(parents=True, exist_ok=True)
    for name in entries:
        src = run / name
        if src.is_dir():
            shutil.copytree(src, out / name)
        else:
            shutil.copy2(src, out / name)
    for config in out.rglob("config.yaml"):
        config.write_text(config.read_text().replace(str(run), named or str(out)))
    return out
