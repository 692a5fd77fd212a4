"""The study's seeds: each seed N is one whole `exectune demo` in run_dir/seed-N with `seed=N`
and `sim.seed=N`. The guides' initialisation, data order and sampling differ, and so do the
teacher's samples (a sampled request draws other text under another sim seed, as a real
provider's sampling does from run to run); the world, its greedy core and the test problems stay
the same. A seed whose demo finished is read back, an interrupted one resumes, as the demo does.
"""

from __future__ import annotations

import json
from pathlib import Path

from exectune_jax import demo
from exectune_jax.config import Config
from exectune_jax.demo.recipe import with_values
from exectune_jax.errors import UserError


def parse_seeds(text: str, least: int = 2) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if len(seeds) < least or len(set(seeds)) != len(seeds) or min(seeds, default=-1) < 0:
        many = "two or more distinct seeds" if least == 2 else "distinct seeds"
        raise UserError(f"--seeds {text!r}: give {many} >= 0, e.g. --seeds 0,1,2")
    return seeds


def seed_dir(root: Path, seed: int) -> Path:
    return root / f"seed-{seed}"


def seed_config(cfg: Config, seed: int) -> Config:
    """A seed's demo: its guides' seed and the sim's (the teacher's samples) both `seed`."""
    return with_values(cfg, {"seed": seed, "sim.seed": seed})


def demo_results(cfg: Config, out: Path, quick: bool, what: str) -> dict | None:
    """`out`'s results.json, after running the demo there unless it finished (None: it stopped)."""
    done = out / "results.json"
    if not done.exists():
        print(f"exectune study: {what} in {out}")
        if demo.run(cfg, out=str(out), quick=quick):
            print(f"exectune study: {what} stopped; run the same command again to resume")
            return None
    return json.loads(done.read_text())
