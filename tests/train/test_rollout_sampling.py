"""RL labelling executes each member of a group with its own core sample index where the core
samples, so identical strategies can disagree; at a greedy core they are one paid call and
replays. The per-step metrics count paid against replayed core calls."""

import numpy as np
import pytest

from exectune_jax.api import open_pool
from exectune_jax.config import load_config
from exectune_jax.data import tasks
from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop.strategy import render
from exectune_jax.sim import serving
from exectune_jax.train import rewards
from exectune_jax.train.rollouts import (
    LabelContext,
    Rollout,
    execution_indices,
    label_rollout,
    outcome_metrics,
)

P = Problem(
    id="p", split="test", answer="27",
    prompt="Maria has 12 apples. She buys 3 boxes of apples with 5 apples in each. "
           "How many apples does Maria have now?",
)
COMPOUND = render(["Multiply 3 by 5, then add 12 to that."])  # followed at follow_compound
G = 8
SPEC = rewards.make_spec("exectune")


def test_execution_indices_are_the_place_in_the_group_only_when_the_core_samples():
    assert execution_indices([0, 1, 2, 5, 8, 9], 4, 1.0) == [0, 1, 2, 1, 0, 1]
    assert execution_indices([0, 1, 2, 5], 4, 0.0) == [0, 0, 0, 0]


def label_twice(run_dir, core_temperature: float):
    cfg = load_config(None, [f"run_dir={run_dir}", "api.follow_check=trace",
                             f"api.core.temperature={core_temperature}"])
    rollout = Rollout(0, 0, [P], G, [[]] * G, [[]] * G, [np.zeros(0)] * G, [COMPOUND] * G)
    with serving(cfg) as served, open_pool(served, cfg.run_dir) as pool:
        ctx = LabelContext(pool=pool, task=tasks.get("arith", n_train=0, n_validation=0, n_test=0),
                           spec=SPEC, stage="rl", price=lambda i, o: 0.0, core_alone=None,
                           core_alone_samples=1)
        first, second = label_rollout(ctx, rollout), label_rollout(ctx, rollout)
    return rollout, first, second


def followed(labelled) -> list[bool]:
    """The ground truth of a one-step strategy: the core's reply opens by following it."""
    return [o.response.startswith("I will follow the strategy") for o in labelled.outcomes]


@pytest.mark.parametrize("core_temperature", [1.0, 0.0])
def test_identical_strategies_disagree_only_where_the_core_samples(tmp_path, core_temperature):
    rollout, first, second = label_twice(tmp_path, core_temperature)
    metrics = outcome_metrics(rollout, first, SPEC)
    if core_temperature > 0:
        assert 0 < sum(followed(first)) < G  # eight executions, eight follow draws
        assert (metrics["core_calls_paid"], metrics["core_calls_replayed"]) == (G, 0)
    else:
        assert len(set(followed(first))) == 1 and len(set(first.rewards)) == 1
        assert (metrics["core_calls_paid"], metrics["core_calls_replayed"]) == (1, G - 1)
    # labelling again (a resumed run) replays every call and every verdict
    assert second.labels == first.labels and second.rewards == first.rewards
    again = outcome_metrics(rollout, second, SPEC)
    assert (again["core_calls_paid"], again["core_calls_replayed"]) == (0, G)
