"""Executability is a probability over the core's samples: the follow draw takes the sample index
(the request's seed), so one strategy executed under many indices is followed at the world's rate,
and the same index replays the same verdict."""

import math

import pytest

from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop import prompts
from exectune_jax.gcop.strategy import render
from exectune_jax.sim.core import SimCore, follow_draw, unit
from exectune_jax.world import WORLD

P = Problem(
    id="p", split="test", answer="27",
    prompt="Maria has 12 apples. She buys 3 boxes of apples with 5 apples in each. "
           "How many apples does Maria have now?",
)
DRAWS = 200


@pytest.mark.parametrize(("steps", "rate"), [
    (["Multiply 3 by 5, then add 12 to that."], WORLD.follow_compound),  # one compound step
    (["Multiply 3 by 5.", "Add the result of step 1 to 12."], WORLD.follow_atomic ** 2),
])
def test_one_strategy_under_many_sample_indices_is_followed_at_the_worlds_rate(steps, rate):
    core = SimCore("sim-core")
    messages = prompts.core_messages(P, "math", render(steps))
    verdicts = [core.respond(messages, temperature=1.0, seed=k).followed for k in range(DRAWS)]
    # within 3.5 binomial standard deviations of DRAWS * rate (a false alarm < 1 in 2,000)
    bound = 3.5 * math.sqrt(DRAWS * rate * (1 - rate))
    assert abs(sum(verdicts) - DRAWS * rate) <= bound
    again = [SimCore("sim-core").respond(messages, temperature=1.0, seed=k).followed
             for k in range(DRAWS)]
    assert again == verdicts  # the same index, the same verdict: a resumed run replays it


def test_sample_index_0_draws_what_it_drew_before_the_index_joined_the_hash():
    # every default execution (greedy core, one sample) keeps its verdict and its cached reply
    for step in range(3):
        assert follow_draw("sim-core", "problem", "strategy", step, 0) == unit(
            "follow", "sim-core", "problem", "strategy", step)
        assert follow_draw("sim-core", "problem", "strategy", step, 1) != follow_draw(
            "sim-core", "problem", "strategy", step, 0)
