"""Code checks of acceptance sampling on the code task: how many sandboxed runs reusing each
distinct test program's result saves, and what that does to the stage's time.

Acceptance sampling as the demo runs it on `--task code` (its proposals, its acceptance), on the
first N funcs training problems against the embedded sim server, twice in one process: once with
each distinct (problem, code) run once (`code.SandboxRuns`), once with every check run again
(the arm without reuse), in alternating order, each arm in a fresh run dir so neither replays the
other's calls. The last line is `sandbox_reuse: <checks> checks, <runs> runs, <a> s vs <b> s`.

    python bench/sandbox_reuse.py [--problems 100] [--rounds 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

from exectune_jax import sandbox
from exectune_jax.api import open_pool
from exectune_jax.config import load_config
from exectune_jax.data.tasks.code import SandboxRuns
from exectune_jax.data.tasks.funcs import FuncsTask
from exectune_jax.demo.recipe import prepare, with_task
from exectune_jax.sim import serving
from exectune_jax.train.acceptance import sample_candidates


class EveryCheck(SandboxRuns):
    """The arm without reuse: every check runs its program."""

    def result(self, key: str, run: Callable[[], sandbox.SandboxResult]) -> sandbox.SandboxResult:
        self.runs += 1
        return run()


def arm(problems: int, reuse: bool) -> tuple[int, int, float]:
    """(checks, sandboxed runs, seconds) of one acceptance sampling run."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = prepare(with_task(load_config(None, [f"run_dir={run_dir}", "metrics.progress=false"]), "code"),
                      None, quick=False)
        # the task itself, not the split-guarded one the stages get, so the arm can swap its runs
        task = FuncsTask(**cfg.task.options)
        train = task.problems("train")
        if not reuse:
            task.sandbox_runs = EveryCheck()
        start = time.perf_counter()
        with serving(cfg) as served, open_pool(served, run_dir) as pool:
            sample_candidates(pool, task, train[:problems], cfg.sample, unfiltered=False,
                              stage="sample", core_model=cfg.api.core.model)
        seconds = time.perf_counter() - start
    runs = task.sandbox_runs
    return runs.runs + runs.reused, runs.runs, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    counts = (0, 0)
    for r in range(args.rounds):
        for reuse in ((True, False) if r % 2 == 0 else (False, True)):
            checks, runs, seconds = arm(args.problems, reuse)
            times[reuse].append(seconds)
            if reuse:
                counts = (checks, runs)
            print(f"round {r}: {'reuse' if reuse else 'every check'}: {checks} checks, {runs} sandboxed "
                  f"runs, {seconds:.1f} s")
    print(f"sandbox_reuse: {counts[0]} checks, {counts[1]} runs, {min(times[True]):.1f} s vs "
          f"{min(times[False]):.1f} s (best of {args.rounds})")


if __name__ == "__main__":
    main()
