"""RL's problem pool (`rl.problems`): the train problems stage 3 draws from.

Acceptance sampling covers the first `sample.n_problems` problems of the train split (all of
it when unset), and SFT teaches the guide verified strategies for exactly those problems. RL
on them mostly replays what SFT taught: groups of one memorised strategy, no spread, nothing
learned (docs/rl.md, "Problems with headroom"). A pool disjoint from acceptance's problems gives
RL problems the guide was never shown a strategy for.

    train          the whole train split, acceptance's problems included
    after_sample   the train problems after the first sample.n_problems
    START-END      train problems START to END - 1 (END may be left out: to the split's end),
                   outside acceptance's; a hyphen, as YAML reads 50:60 as a base-60 number

The pool is read against this config's `sample.n_problems`: the run's acceptance stage must have
run with the same value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from exectune_jax.data.tasks.base import Problem
from exectune_jax.errors import UserError

WHOLE, AFTER_SAMPLE = "train", "after_sample"
_SLICE = re.compile(r"(\d+)-(\d*)")


def acceptance_share(n_train: int, n_sample: int | None) -> int:
    """How many of the train split's first problems acceptance sampling covers."""
    return n_train if n_sample is None else min(n_sample, n_train)


def pool_range(spec: str, n_train: int, n_sample: int | None) -> range:
    """Indices into the train split of RL's pool; a UserError naming `rl.problems` when `spec`
    is not one of the forms above, or its pool is empty or overlaps acceptance's problems."""
    covered = acceptance_share(n_train, n_sample)
    if spec == WHOLE:
        return range(n_train)
    if spec == AFTER_SAMPLE:
        start, end = covered, n_train
    else:
        m = _SLICE.fullmatch(spec.strip())
        if m is None:
            raise UserError(f"config: `rl.problems` is {spec!r}; choose {WHOLE}, {AFTER_SAMPLE} "
                            "or a slice START-END of the train split")
        start, end = int(m[1]), int(m[2]) if m[2] else n_train
        if end > n_train:
            raise UserError(f"config: `rl.problems` is {spec!r} but the train split has "
                            f"{n_train} problems")
        if start < covered:
            raise UserError(f"config: `rl.problems` is {spec!r}, which overlaps the first "
                            f"{covered} train problems that acceptance sampling covers; start "
                            f"at {covered} or later, or set sample.n_problems lower")
    if start >= end:
        raise UserError(f"config: `rl.problems` is {spec!r} and leaves no problem: acceptance "
                        f"sampling covers the first {covered} of {n_train} train problems; set "
                        "sample.n_problems lower or make the task's train split larger")
    return range(start, end)


def rl_pool(train: Sequence[Problem], spec: str, n_sample: int | None) -> list[Problem]:
    """The train problems RL draws from, in split order."""
    return [train[i] for i in pool_range(spec, len(train), n_sample)]
