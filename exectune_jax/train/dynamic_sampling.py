"""Dynamic sampling (DAPO, Yu et al. 2025): a step's groups without spread are replaced by
groups on other problems from the pool until the batch is full, within `rl.max_extra_groups`
extra groups per step.

A group without spread (fewer than two valid rewards, or all of them within the spread
tolerance: train/advantages.py) gets advantage 0 under every estimator: its samples cost their
core calls and teach nothing, and each one left in the batch makes the update smaller. DAPO
samples more prompts and keeps the groups with spread. Here each round draws as many problems as
the batch still lacks (within the cap), samples G strategies for each with the current policy,
labels them, and puts the drawn groups that have spread in the places of those that have none,
in order. When the cap or the pool runs out first, the step trains on what it has: the groups
still without spread stay, at advantage 0, and the step's record counts them (`unfilled`).

The replacement problems come from a stream of the pool in a seeded order of its own (one
permutation per pass), read from a position the checkpoint keeps; a problem already in the step
is passed over. Their strategies are sampled with the run's RNG folded with that position, so a
resumed run draws the same problems and samples the same strategies, and the call cache replays
their verdicts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from exectune_jax.data.tasks.base import Problem
from exectune_jax.train.advantages import group_rewards, informative_groups
from exectune_jax.train.rollouts import Labelled, Rollout, failed_calls

# folded into the run's RNG for the replacement samples: a stream apart from the batches', which
# fold in their own batch number (never this large)
RNG_STREAM = 2**31 - 1
_STREAM_TAG = 0x0D5A  # seeds the pool's replacement order apart from the prompt iterator's


@functools.lru_cache(maxsize=4)
def _permutation(pool_size: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = np.random.default_rng([seed, _STREAM_TAG, epoch]).permutation(pool_size)
    return tuple(int(i) for i in order)


def stream_order(pool_size: int, seed: int, position: int) -> int:
    """The pool index at `position` of the replacement stream: pass `position // pool_size` is
    its own seeded permutation of the pool."""
    epoch, offset = divmod(position, pool_size)
    return _permutation(pool_size, seed, epoch)[offset]


def take(pool_size: int, seed: int, position: int, k: int,
         exclude: set[int]) -> tuple[list[int], int]:
    """Up to k distinct pool indices from the stream at `position`, none in `exclude`, and the
    position after them. Fewer when the pool has fewer problems outside `exclude`."""
    picked: list[int] = []
    # two passes' length holds one whole permutation: every index not excluded is met
    for scanned in range(2 * pool_size):
        if len(picked) == k:
            break
        i = stream_order(pool_size, seed, position + scanned)
        if i not in exclude and i not in picked:
            picked.append(i)
    else:
        scanned = 2 * pool_size
    return picked, position + scanned


class ReplacementStream:
    """The pool's replacement problems, in the stream's order; `position` goes in checkpoints."""

    def __init__(self, pool: Sequence[Problem], seed: int, position: int = 0):
        self.pool, self.seed, self.position = list(pool), seed, position
        self._index = {p.id: i for i, p in enumerate(self.pool)}

    def draw(self, k: int, exclude_ids: set[str]) -> list[Problem]:
        """Up to k problems of the pool that are not in `exclude_ids`; advances the stream."""
        exclude = {self._index[i] for i in exclude_ids if i in self._index}
        picked, self.position = take(len(self.pool), self.seed, self.position, k, exclude)
        return [self.pool[i] for i in picked]


def without_spread(labelled: Labelled, group_size: int, spread_tol: float) -> list[int]:
    """The groups (in batch order) whose valid rewards have no spread beyond `spread_tol`."""
    values, valid = group_rewards(labelled.rewards, group_size)
    return [int(g) for g in np.flatnonzero(~informative_groups(values, valid, spread_tol))]


def put_group(rollout: Rollout, labelled: Labelled, slot: int, source: Rollout,
              source_labelled: Labelled, group: int) -> tuple[Rollout, Labelled]:
    """The batch with group `slot` replaced by group `group` of `source` (rows, log-probs,
    labels, outcomes, rewards), everything else as it was."""
    g = rollout.group_size
    dst, src = slice(slot * g, (slot + 1) * g), slice(group * g, (group + 1) * g)

    def put(rows: list, rows_from: list) -> list:
        out = list(rows)
        out[dst] = rows_from[src]
        return out

    problems = list(rollout.problems)
    problems[slot] = source.problems[group]
    new_rollout = replace(
        rollout, problems=problems, prompts=put(rollout.prompts, source.prompts),
        completions=put(rollout.completions, source.completions),
        logprobs=put(rollout.logprobs, source.logprobs), texts=put(rollout.texts, source.texts))
    new_labelled = replace(
        labelled, labels=put(labelled.labels, source_labelled.labels),
        outcomes=put(labelled.outcomes, source_labelled.outcomes),
        rewards=put(labelled.rewards, source_labelled.rewards))
    return new_rollout, replace(new_labelled, errors=failed_calls(new_labelled.outcomes))


@dataclass
class Filled:
    """A step's batch after dynamic sampling, and what it took."""

    rollout: Rollout
    labelled: Labelled
    extra: int = 0  # groups drawn, sampled and labelled beyond the batch's own
    replaced: int = 0  # groups without spread that a drawn group with spread took the place of
    unfilled: int = 0  # groups without spread left in the batch: the cap or the pool ran out
    labellings: list[Labelled] = field(default_factory=list)  # every labelling the step paid for
    drawn_with_spread: float = 0.0  # share of all groups labelled this step that had spread


def fill(rollout: Rollout, labelled: Labelled, *, spread_tol: float, max_extra: int,
         draw: Callable[[int, set[str]], list[Problem]],
         sample: Callable[[list[Problem]], Rollout],
         label: Callable[[Rollout], Labelled]) -> Filled:
    """Replace the batch's groups without spread by drawn groups with spread, drawing at most
    `max_extra` groups (0: the batch as it is). `draw(k, ids_in_step)` gives up to k problems
    not in the step, `sample` samples a group per problem, `label` labels a rollout."""
    g, groups = rollout.group_size, len(rollout.problems)
    missing = without_spread(labelled, g, spread_tol)
    labellings, extra, replaced = [labelled], 0, 0
    with_spread = groups - len(missing)
    in_step = {p.id for p in rollout.problems}
    while missing and extra < max_extra:
        problems = draw(min(len(missing), max_extra - extra), in_step)
        if not problems:
            break
        in_step |= {p.id for p in problems}
        extra += len(problems)
        drawn = sample(problems)
        drawn_labelled = label(drawn)
        labellings.append(drawn_labelled)
        flat = set(without_spread(drawn_labelled, g, spread_tol))
        for k in (k for k in range(len(problems)) if k not in flat):
            rollout, labelled = put_group(rollout, labelled, missing.pop(0), drawn,
                                          drawn_labelled, k)
            with_spread += 1
            replaced += 1
    return Filled(rollout, labelled, extra=extra, replaced=replaced,
                  unfilled=len(missing) if max_extra else 0, labellings=labellings,
                  drawn_with_spread=with_spread / (groups + extra))
