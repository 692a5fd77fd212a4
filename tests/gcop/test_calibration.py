"""The simulated world is calibrated so that acceptance sampling, the format gate, the leak
penalty and the cost term matter the way they do with real APIs (in process, no HTTP).

Measured on the validation split only: the world's values are chosen there, never on test."""

import collections
import random

import pytest

from exectune_jax import tokens
from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.gcop import prompts, strategy
from exectune_jax.sim import models
from exectune_jax.sim.teacher import atomic, write
from exectune_jax.world import WORLD, WORLD_V2

PRICE_IN, PRICE_OUT = 0.80, 4.00  # sim-core, USD per million tokens


@pytest.fixture(scope="module")
def task():
    return tasks.get("arith")


@pytest.fixture(scope="module")
def validation(task):
    return task.problems("validation")


def execute(problem, text, seed=0, core="sim-core", world=WORLD):
    messages = prompts.core_messages(problem, "math", text)
    return messages, models.get(core, world).complete(messages, max_tokens=512, temperature=0.0, seed=seed)


def accuracy(task, items, seeds=(0,), core="sim-core", world=WORLD):
    hits = [task.check(p, execute(p, s, seed, core, world)[1]).correct for p, s in items for seed in seeds]
    return sum(hits) / len(hits)


def test_core_alone_is_near_the_papers_seventy_percent(task, validation):
    assert 0.62 <= accuracy(task, [(p, None) for p in validation]) <= 0.78


def test_strong_core_alone_is_near_eighty_five_percent(task, validation):
    assert 0.78 <= accuracy(task, [(p, None) for p in validation], core="sim-core-strong") <= 0.92


def test_correct_atomic_strategies_are_executed(task, validation):
    items = [(p, strategy.render(atomic(parse_problem(p.prompt)))) for p in validation]
    assert accuracy(task, items) >= 0.97


def test_wrong_strategies_lead_to_wrong_answers(task, validation):
    items = []
    for i, p in enumerate(validation):
        steps = write(parse_problem(p.prompt), "wrong", random.Random(i))
        if steps:
            items.append((p, strategy.render(steps)))
    assert len(items) >= 0.9 * len(validation)
    assert accuracy(task, items) <= 0.1


def test_a_good_guide_makes_each_problem_cheaper_than_the_core_alone(validation):
    def usd(p, text):
        messages, reply = execute(p, text)
        return (tokens.count_messages(messages) * PRICE_IN + tokens.count(reply) * PRICE_OUT) / 1e6

    alone = sum(usd(p, None) for p in validation)
    guided = sum(usd(p, strategy.render(atomic(parse_problem(p.prompt)))) for p in validation)
    assert guided < 0.6 * alone


@pytest.mark.parametrize("world", [WORLD_V2, WORLD], ids=["v2", "v3"])
def test_acceptance_filtered_strategies_replay_while_unfiltered_ones_do_not(task, validation, world):
    """In version 3 a strategy the core does not carry out still helps (a named operation, a
    recovery), so the unfiltered ones replay better than in version 2 and the gap narrows
    (0.938 against 0.883 on validation), but acceptance still picks strategies that replay."""
    teacher = models.get("sim-teacher", world)
    well_formed, accepted, styles = [], [], collections.Counter()
    for p in validation:
        for k in range(3):
            reply = teacher.complete(prompts.teacher_propose_messages(p, "math"), max_tokens=512,
                                     temperature=1.0, seed=k)
            styles[reply.rsplit("style: ", 1)[1]] += 1
            parsed = strategy.parse(reply)
            if not parsed.ok:
                continue
            text = strategy.render(parsed.steps)
            well_formed.append((p, text))
            if strategy.leaks(text, p, "math") is None and task.check(p, execute(p, text, world=world)[1]).correct:
                accepted.append((p, text))
    assert len(styles) == 6 and styles["atomic"] < 0.6 * sum(styles.values())
    assert len(accepted) >= 0.5 * len(well_formed)
    # at sample indices acceptance never used: each execution draws its own follow verdict, so
    # one right execution makes a strategy likely, not sure, to be followed again (0.89 here)
    replayed, unfiltered = (accuracy(task, accepted, seeds=(7, 8), world=world),
                            accuracy(task, well_formed, seeds=(7, 8), world=world))
    assert replayed >= 0.85 and replayed - unfiltered >= 0.04
    assert world is WORLD or unfiltered <= 0.84


def test_advice_that_names_the_right_operations_helps_even_when_not_followed_to_the_end(task, validation):
    """Graded following gives outcome-only rewards a gradient: the base guide's prose advice
    (right operations, story order) is followed to the end only sometimes, yet lifts accuracy."""
    from exectune_jax.sim import guide

    core = models.get("sim-core")
    replies = [core.respond(prompts.core_messages(p, "math", guide.advice(p))) for p in validation]
    followed = sum(r.followed for r in replies) / len(replies)
    advised = sum(task.check(p, r.text).correct for p, r in zip(validation, replies)) / len(replies)
    assert 0.1 <= followed <= 0.7
    assert advised >= accuracy(task, [(p, None) for p in validation]) + 0.08


def test_the_teachers_compound_habit_is_followed_part_of_the_time(validation):
    core, rows = models.get("sim-core"), []
    for i, p in enumerate(validation):
        steps = write(parse_problem(p.prompt), "compound", random.Random(i))
        if steps:
            rows.append(core.respond(prompts.core_messages(p, "math", strategy.render(steps))).followed)
    assert 0.25 <= sum(rows) / len(rows) <= 0.75
