"""`exectune demo`: the whole method end to end on the embedded offline default.

One loopback sim server (with the `sim` section's latency, rate limit and faults) stands in for
the core and teacher APIs for every stage; then: base guide -> acceptance sampling (filtered and
unfiltered) -> SFT on each -> advisor-style RL from the base guide and ExecTune RL from the
filtered SFT guide (and from it against the next core) -> the method table, on each core ->
HF export of the final guide. Run again, it resumes from what the stages finished.

Three rooms: `recipe` (stages, phases, sizes, each stage's config and command), `runner` (each
stage as the CLI's own command in a process of its own, one progress line) and `report` (the
closing summary). `--quick` is a smoke run of the plumbing. results.json holds no timings or
paths: the same seed gives the same file, with or without injected API faults.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from exectune_jax import preflight
from exectune_jax.config import Config, dump
from exectune_jax.demo.recipe import phases, prepare, stage_commands, stage_configs, with_task
from exectune_jax.demo.report import SMOKE_NOTE, closing_summary, collect_outputs, follow_study
from exectune_jax.demo.runner import run_phases

__all__ = ["prepare", "run"]


def run(cfg: Config, out: str | None = None, quick: bool = False, task: str | None = None,
        task_named: bool = False) -> int:
    cfg = prepare(with_task(cfg, task, task_named), out, quick)
    preflight.check(cfg, "demo")
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    dump(cfg, root / "demo_config.yaml")
    if quick:
        print(f"exectune demo --quick: {SMOKE_NOTE}", file=sys.stderr)
    start = time.perf_counter()
    seconds = run_phases(cfg, phases(cfg), stage_configs, stage_commands(cfg))
    if seconds is None:
        return 1
    collect_outputs(cfg, root)
    print(closing_summary(root, seconds, time.perf_counter() - start, follow_study(root, cfg),
                          quick=quick))
    return 0
