"""Dynamic sampling on constructed batches: groups without spread are replaced by drawn groups
with spread, within the cap; the replacement stream is deterministic from its position."""

import numpy as np
import pytest

from exectune_jax.data.tasks.base import Problem
from exectune_jax.train.advantages import dr_grpo_advantages, group_rewards, informative_groups
from exectune_jax.train.dynamic_sampling import ReplacementStream, fill, take
from exectune_jax.train.rewards import Label
from exectune_jax.train.rollouts import Labelled, Rollout

G = 4
TOL = 100 * 0.0001  # lambda * rl.cost_resolution_usd at the exectune preset's defaults
# rewards per problem: a right/wrong split, all right, all right but one USD 0.00004 dearer
SPLIT, FLAT, COST_ONLY = [1.5, 0.0, 1.5, 0.0], [1.5] * G, [1.5, 1.5, 1.5, 1.5 - 100 * 0.00004]


def problem(i: int) -> Problem:
    return Problem(id=f"p{i:02d}", prompt=f"problem {i}", answer="1", split="train")


def rollout_of(problems: list[Problem]) -> Rollout:
    n = len(problems) * G
    return Rollout(index=0, policy_step=0, problems=list(problems), group_size=G,
                   prompts=[[k] for k in range(n)], completions=[[k, k] for k in range(n)],
                   logprobs=[np.zeros(2, np.float32)] * n,
                   texts=[f"{p.id} strategy {j}" for p in problems for j in range(G)])


def labelled_of(rows: list[list[float]]) -> Labelled:
    rewards = [r for row in rows for r in row]
    labels = [Label(well_formed=True, leaked=False, executed=True, correct=r > 0, core_alone=None,
                    usd=0.0) for r in rewards]
    return Labelled(labels, [None] * len(rewards), rewards)


class World:
    """A constructed step: each problem's group gets the rewards its table row names; draws
    come from a stream over the pool; every sampling and labelling is recorded."""

    def __init__(self, pool: list[Problem], rewards: dict[str, list[float]]):
        self.stream = ReplacementStream(pool, seed=0)
        self.rewards, self.drawn = rewards, []

    def draw(self, k: int, exclude: set[str]) -> list[Problem]:
        got = self.stream.draw(k, exclude)
        self.drawn.append([p.id for p in got])
        return got

    def sample(self, problems: list[Problem]) -> Rollout:
        return rollout_of(problems)

    def label(self, rollout: Rollout) -> Labelled:
        return labelled_of([self.rewards[p.id] for p in rollout.problems])


def run_fill(batch: list[Problem], world: World, rows: list[list[float]], max_extra: int):
    return fill(rollout_of(batch), labelled_of(rows), spread_tol=TOL, max_extra=max_extra,
                draw=world.draw, sample=world.sample, label=world.label)


def test_groups_without_spread_are_replaced_until_every_group_of_the_step_has_spread():
    batch, pool = [problem(0), problem(1), problem(2)], [problem(i) for i in range(3, 9)]
    # the stream's first draws: whichever problem comes first has no spread, the rest have
    world = World(pool, {})
    order = [p.id for p in ReplacementStream(pool, seed=0).draw(len(pool), set())]
    world.rewards = {pid: FLAT if k == 0 else SPLIT for k, pid in enumerate(order)}
    out = run_fill(batch, world, [SPLIT, FLAT, COST_ONLY], max_extra=8)
    # round 1 draws the two missing, one of which has no spread; round 2 draws the one still missing
    assert world.drawn == [order[:2], order[2:3]]
    assert (out.extra, out.replaced, out.unfilled) == (3, 2, 0)
    assert [p.id for p in out.rollout.problems] == ["p00", order[1], order[2]]
    values, valid = group_rewards(out.labelled.rewards, G)
    assert informative_groups(values, valid, TOL).all()
    assert np.abs(dr_grpo_advantages(values, valid, spread_tol=TOL)).sum(axis=1).min() > 0
    # the replaced slot holds the drawn group's own rows, strategies and rewards
    assert out.rollout.texts[G:2 * G] == [f"{order[1]} strategy {j}" for j in range(G)]
    assert out.labelled.rewards[G:2 * G] == SPLIT
    assert out.drawn_with_spread == pytest.approx(3 / 6)  # p00, and two of the three drawn
    assert len(out.labellings) == 3


def test_the_cap_bounds_the_extra_groups_and_the_step_trains_on_what_it_has():
    batch, pool = [problem(0), problem(1), problem(2)], [problem(i) for i in range(3, 9)]
    world = World(pool, {p.id: FLAT for p in pool})
    out = run_fill(batch, world, [SPLIT, FLAT, COST_ONLY], max_extra=3)
    assert out.extra == 3 and out.replaced == 0 and out.unfilled == 2
    assert sum(len(d) for d in world.drawn) == 3  # no draw past the cap
    assert [p.id for p in out.rollout.problems] == ["p00", "p01", "p02"]
    assert out.labelled.rewards == SPLIT + FLAT + COST_ONLY


def test_an_exhausted_pool_ends_the_filling_and_counts_the_groups_left():
    batch = [problem(0), problem(1)]
    pool = batch + [problem(2)]  # one problem outside the step
    world = World(pool, {"p02": FLAT})
    out = run_fill(batch, world, [FLAT, FLAT], max_extra=10)
    assert world.drawn == [["p02"], []]
    assert out.extra == 1 and out.replaced == 0 and out.unfilled == 2


def test_no_extra_groups_leaves_the_batch_and_draws_nothing():
    batch, pool = [problem(0), problem(1)], [problem(i) for i in range(2, 6)]
    world = World(pool, {p.id: SPLIT for p in pool})
    out = run_fill(batch, world, [FLAT, SPLIT], max_extra=0)
    assert world.drawn == [] and (out.extra, out.replaced, out.unfilled) == (0, 0, 0)
    assert out.drawn_with_spread == 0.5


def test_the_replacement_stream_resumes_from_its_position_and_skips_the_step():
    pool = [problem(i) for i in range(10)]
    whole = ReplacementStream(pool, seed=3)
    first = whole.draw(4, {"p00", "p01"})
    assert not {"p00", "p01"} & {p.id for p in first} and len({p.id for p in first}) == 4
    saved = whole.position
    rest = [whole.draw(3, set()) for _ in range(5)]
    resumed = ReplacementStream(pool, seed=3, position=saved)
    assert [resumed.draw(3, set()) for _ in range(5)] == rest
    other_seed, same_seed = (ReplacementStream(pool, seed=s).draw(10, set()) for s in (4, 3))
    assert other_seed != same_seed


def test_a_pass_of_the_stream_meets_every_problem_once():
    picked, position = take(7, seed=0, position=0, k=7, exclude=set())
    assert sorted(picked) == list(range(7)) and position == 7
    picked, _ = take(7, seed=0, position=3, k=10, exclude={0, 1})
    assert sorted(picked) == [2, 3, 4, 5, 6]  # no more than the pool holds outside `exclude`
