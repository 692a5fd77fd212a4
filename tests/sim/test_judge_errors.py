"""sim-judge can be wrong: at the world's stated rates it errs in each direction, by a stable hash
of the exchange; and where the core does not announce that it sets a strategy aside, the judge
must decide from the computations alone. Measured against sim-core's own truth on the teacher's
mixed first proposals (train split: the validation split is kept for choosing world v3)."""

import math

import pytest

from exectune_jax.data import tasks
from exectune_jax.gcop import prompts
from exectune_jax.gcop.follow import agreement, parse_judge_reply
from exectune_jax.sim import models
from exectune_jax.sim.judge import _ASIDE, SimJudge, decide
from exectune_jax.world import WORLD, WORLD_V2, world_from

N = 400


def exchanges(world):
    """(problem, strategy, response, truth) for N teacher first proposals executed in `world`."""
    problems = tasks.get("arith", n_train=N, n_validation=0, n_test=0).problems("train")
    core, teacher = models.get("sim-core", world), models.get("sim-teacher", world)
    out = []
    for k, p in enumerate(problems):
        strategy = teacher.complete(prompts.teacher_propose_messages(p, "math"), temperature=1.0, seed=k)
        reply = core.respond(prompts.core_messages(p, "math", strategy))
        out.append((p.prompt, strategy, reply.text, reply.followed))
    return out


def verdicts(judge, rows):
    return [parse_judge_reply(judge.complete(prompts.judge_follow_messages(p, s, r)))[0] for p, s, r, _ in rows]


@pytest.fixture(scope="module")
def announced():
    return exchanges(WORLD_V2)


def within_binomial(k, n, p, sigmas=4.0):
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_at_rates_zero_the_judge_agrees_with_the_truth_where_the_core_announces(announced):
    got = agreement(list(zip(verdicts(models.get("sim-judge", WORLD_V2), announced), (t for *_, t in announced))))
    assert got["agreement"] == 1.0


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_false_yes_turns_some_not_followed_executions_into_followed_and_no_followed_one_into_not(announced, rate):
    said = verdicts(SimJudge(world_from({"version": 2, "judge_false_yes": rate})), announced)
    truth = [t for *_, t in announced]
    not_followed = [v for v, t in zip(said, truth) if not t]
    followed = [v for v, t in zip(said, truth) if t]
    assert len(not_followed) >= 150 and len(followed) >= 150  # a few hundred of each kind
    flipped = not_followed.count("yes")
    assert flipped > 0 and within_binomial(flipped, len(not_followed), rate)
    assert followed.count("no") == 0
    assert agreement(list(zip(said, truth)))["agreement"] < 1.0


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_false_no_turns_some_followed_executions_into_not_followed_and_no_other_into_followed(announced, rate):
    said = verdicts(SimJudge(world_from({"version": 2, "judge_false_no": rate})), announced)
    truth = [t for *_, t in announced]
    followed = [v for v, t in zip(said, truth) if t]
    flipped = followed.count("no")
    assert flipped > 0 and within_binomial(flipped, len(followed), rate)
    assert [v for v, t in zip(said, truth) if not t].count("yes") == 0
    assert agreement(list(zip(said, truth)))["agreement"] < 1.0


def test_one_exchange_always_gets_one_verdict_and_a_higher_rate_flips_a_superset(announced):
    rows = announced[:120]
    world = world_from({"version": 2, "judge_false_yes": 0.2, "judge_false_no": 0.2})
    first = verdicts(SimJudge(world), rows)
    again = [parse_judge_reply(SimJudge(world).complete(prompts.judge_follow_messages(p, s, r), temperature=1.0,
                                                        seed=7))[0] for p, s, r, _ in rows]
    assert first == again == verdicts(models.get("sim-judge", world), rows)
    truth = [t for *_, t in rows]
    low = {i for i, (v, t) in enumerate(zip(first, truth)) if (v == "yes") != t}
    high_said = verdicts(SimJudge(world_from({"version": 2, "judge_false_yes": 0.5, "judge_false_no": 0.5})), rows)
    high = {i for i, (v, t) in enumerate(zip(high_said, truth)) if (v == "yes") != t}
    assert low and low < high


def test_a_core_that_does_not_announce_never_writes_the_aside_and_the_judge_reads_computations_only():
    world = world_from({"version": 2, "core_announces_aside": False})
    rows = exchanges(world)
    assert not any(_ASIDE.search(r) for _, _, r, _ in rows)
    assert any(_ASIDE.search(r) for _, _, r, _ in exchanges(WORLD_V2)[:50])  # version 2 announces
    truth = [t for *_, t in rows]
    got = agreement(list(zip(verdicts(models.get("sim-judge", world), rows), truth)))
    print(f"\nsim-judge at rates 0, core not announcing, {N} train problems: {got}")
    # Measured (docs/world.md): agreement 0.635, kappa 0.250; every followed execution is read
    # as followed, and 146 of the 193 not followed are read as followed too: the core set the
    # strategy aside and its own (mostly right) solution computes the strategy's very steps.
    assert got["confusion"]["no_true"] == 0
    assert 0.5 < got["agreement"] < 1.0 and got["confusion"]["yes_false"] > 0


def test_the_judge_reads_the_aside_only_in_a_world_whose_core_announces_it():
    problem = "Ann has 3 boxes with 5 pens each. How many pens does she have?"
    strategy = "<strategy>\n1. Multiply 3 by 5.\n</strategy>"
    response = "I cannot follow the strategy, so I will solve the problem my own way.\nStep 1: 3 * 5 = 15.\nThe answer is 15."
    assert decide(problem, strategy, response)[0] is False
    assert decide(problem, strategy, response, read_aside=False)[0] is True
    assert SimJudge(world_from({"core_announces_aside": False})).world.core_announces_aside is False


def test_in_world_version_3_the_judge_reads_computations_and_errs_both_ways():
    world = WORLD
    rows = exchanges(world)
    assert not any(_ASIDE.search(r) for _, _, r, _ in rows)
    truth = [t for *_, t in rows]
    got = agreement(list(zip(verdicts(models.get("sim-judge", world), rows), truth)))
    print(f"\nsim-judge in world version 3, {N} train problems: {got}")
    # Lenient from its reading alone (not-followed executions that compute the strategy's steps),
    # strict at the stated false-no rate (followed ones it calls not followed).
    assert got["confusion"]["yes_false"] > 0 and got["confusion"]["no_true"] > 0
    assert got["agreement"] < 1.0
