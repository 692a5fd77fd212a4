"""The simulated world is calibrated so that acceptance sampling, the format gate, the leak
penalty and the cost term matter the way they do with real APIs (in process, no HTTP)."""

import collections
import random

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.gcop import prompts, strategy
from exectune_jax.sim import models, tokens
from exectune_jax.sim.teacher import atomic, write

PRICE_IN, PRICE_OUT = 0.80, 4.00  # sim-core, USD per million tokens


@pytest.fixture(scope="module")
def task():
    return tasks.get("arith")


@pytest.fixture(scope="module")
def test_split(task):
    return task.problems("test")


def execute(problem, text, seed=0, core="sim-core"):
    messages = prompts.core_messages(problem, "math", text)
    return messages, models.get(core).complete(messages, max_tokens=512, temperature=0.0, seed=seed)


def accuracy(task, items, seeds=(0,), core="sim-core"):
    hits = [task.check(p, execute(p, s, seed, core)[1]).correct for p, s in items for seed in seeds]
    return sum(hits) / len(hits)


def test_core_alone_is_near_the_papers_seventy_percent(task, test_split):
    assert 0.62 <= accuracy(task, [(p, None) for p in test_split]) <= 0.78


def test_strong_core_alone_is_near_eighty_five_percent(task, test_split):
    assert 0.78 <= accuracy(task, [(p, None) for p in test_split], core="sim-core-strong") <= 0.92


def test_correct_atomic_strategies_are_executed(task, test_split):
    items = [(p, strategy.render(atomic(parse_problem(p.prompt)))) for p in test_split]
    assert accuracy(task, items) >= 0.97


def test_wrong_strategies_lead_to_wrong_answers(task, test_split):
    items = []
    for i, p in enumerate(test_split):
        steps = write(parse_problem(p.prompt), "wrong", random.Random(i))
        if steps:
            items.append((p, strategy.render(steps)))
    assert len(items) >= 0.9 * len(test_split)
    assert accuracy(task, items) <= 0.1


def test_a_good_guide_makes_each_problem_cheaper_than_the_core_alone(test_split):
    def usd(p, text):
        messages, reply = execute(p, text)
        return (tokens.count_messages(messages) * PRICE_IN + tokens.count(reply) * PRICE_OUT) / 1e6

    alone = sum(usd(p, None) for p in test_split)
    guided = sum(usd(p, strategy.render(atomic(parse_problem(p.prompt)))) for p in test_split)
    assert guided < 0.6 * alone


def test_acceptance_filtered_strategies_replay_while_unfiltered_ones_do_not(task, test_split):
    teacher = models.get("sim-teacher")
    well_formed, accepted, styles = [], [], collections.Counter()
    for p in test_split:
        for k in range(3):
            reply = teacher.complete(prompts.teacher_propose_messages(p, "math"), max_tokens=512,
                                     temperature=1.0, seed=k)
            styles[reply.rsplit("style: ", 1)[1]] += 1
            parsed = strategy.parse(reply)
            if not parsed.ok:
                continue
            text = strategy.render(parsed.steps)
            well_formed.append((p, text))
            if strategy.leaks(text, p, "math") is None and task.check(p, execute(p, text)[1]).correct:
                accepted.append((p, text))
    assert len(styles) == 6 and styles["atomic"] < 0.6 * sum(styles.values())
    assert len(accepted) >= 0.5 * len(well_formed)
    assert accuracy(task, accepted, seeds=(7, 8)) >= 0.95
    assert accuracy(task, well_formed, seeds=(7, 8)) <= 0.88
