"""RL's problem pool: disjoint from acceptance sampling's problems, or refused."""

import pytest

from exectune_jax.config import load_config
from exectune_jax.errors import UserError
from exectune_jax.train.acceptance import training_problems
from exectune_jax.train.problem_pool import rl_pool

TASK = ["task.options.n_train=64", "task.options.n_validation=8", "task.options.n_test=8"]


def pools(*overrides: str) -> tuple[set[str], list[str], list[str]]:
    """(acceptance's problem ids, RL's pool ids, the train split's ids) under one config."""
    cfg = load_config(None, [*TASK, *overrides])
    task, sampled = training_problems(cfg)
    train = task.problems("train")
    pool = rl_pool(train, cfg.rl.problems, cfg.sample.n_problems)
    return {p.id for p in sampled}, [p.id for p in pool], [p.id for p in train]


def test_after_sample_is_the_rest_of_the_train_split_and_shares_no_problem_with_acceptance():
    sampled, pool, train = pools("sample.n_problems=48", "rl.problems=after_sample")
    assert len(sampled) == 48 and len(pool) == 16
    assert not sampled & set(pool)
    assert sampled | set(pool) == set(train)


def test_an_explicit_slice_outside_acceptance_is_the_pool():
    sampled, pool, train = pools("sample.n_problems=40", "rl.problems=50-60")
    assert pool == train[50:60] and not sampled & set(pool)
    _, to_the_end, train = pools("sample.n_problems=40", "rl.problems=40-")
    assert to_the_end == train[40:]


def test_the_default_pool_is_the_whole_train_split():
    sampled, pool, train = pools("sample.n_problems=48")
    assert pool == train and sampled < set(pool)


@pytest.mark.parametrize("overrides, message", [
    (("rl.problems=after_sample",), "covers the first 64 of 64"),  # acceptance takes them all
    (("sample.n_problems=48", "rl.problems=40-60"), "overlaps the first 48"),
    (("sample.n_problems=48", "rl.problems=50-80"), "has 64 problems"),
    (("sample.n_problems=48", "rl.problems=60-50"), "leaves no problem"),
    (("rl.problems=validation",), "choose train, after_sample"),
])
def test_an_overlapping_empty_or_malformed_pool_is_refused_naming_rl_problems(overrides, message):
    with pytest.raises(UserError, match="rl.problems") as err:
        pools(*overrides)
    assert message in str(err.value)
