"""The code world: sim-core writes Python for funcs problems, following a strategy's steps at the
world's code_follow rates and its own (sometimes wrong) code otherwise; verdicts come from the
hidden tests run in the sandbox; a strategy holding the solution's code leaks."""

import math
import random

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.funcs import program_of
from exectune_jax.gcop import prompts, strategy
from exectune_jax.gcop.strategy import render
from exectune_jax.sim import code_teacher, judge
from exectune_jax.sim.core import SimCore
from exectune_jax.train.acceptance import judge_reply
from exectune_jax.world import WORLD, WORLD_V2, world_from

SURE = world_from({"code_follow": {k: 1.0 for k in ("atomic", "prose", "compound", "verbose", "vague")},
                   "core": {"slip": 0.0}})


@pytest.fixture(scope="module")
def task():
    return tasks.get("funcs", n_train=10, n_validation=200, n_test=10)


def executed(core, p, text, seed=0):
    reply = core.respond(prompts.core_messages(p, "code", text), seed=seed)
    return reply, text and judge.verdict(p.prompt, text, reply.text, core.world)


def test_a_followed_correct_strategy_passes_the_hidden_tests(task):
    core = SimCore("sim-core", SURE)
    for p in task.problems("validation")[:12]:
        reply, (judged, _) = executed(core, p, render(code_teacher.atomic(program_of(p))))
        assert reply.followed and judged
        assert task.check(p, reply.text).correct, reply.text


def test_a_followed_wrong_strategy_fails_the_hidden_tests(task):
    core = SimCore("sim-core", SURE)
    written = [(p, code_teacher.write(program_of(p), "wrong", random.Random(i), SURE))
               for i, p in enumerate(task.problems("validation")[:12])]
    replies = [(p, executed(core, p, render(steps))[0]) for p, steps in written if steps]
    followed = [(p, r) for p, r in replies if r.followed]  # a changed number may not be the problem's
    assert len(followed) >= 8
    for p, reply in followed:
        assert not task.check(p, reply.text).correct, reply.text


def test_a_strategy_holding_the_solution_code_leaks_and_plain_steps_do_not(task):
    p = task.problems("validation")[0]
    program = program_of(p)
    leak = render(code_teacher.write(program, "leak", random.Random(0)))
    assert "reference solution" in strategy.leaks(leak, p, "code")
    assert judge_reply(p, "code", 0, 0, True, leak, None, check_leak=True).status == "leak"
    for style in ("atomic", "compound", "verbose"):
        steps = code_teacher.write(program, style, random.Random(0))
        assert steps is None or strategy.leaks(render(steps), p, "code") is None


def test_the_core_alone_is_right_at_its_stated_rate(task):
    problems = task.problems("validation")[:150]
    core = SimCore("sim-core")
    flip = core.profile.flip
    expected = [(r := core.solo_rate(p.meta["steps"])) * (1 - flip) + (1 - r) * flip for p in problems]
    right = [task.check(p, core.respond(prompts.core_messages(p, "code", None)).text).correct for p in problems]
    sd = math.sqrt(sum(e * (1 - e) for e in expected)) / len(problems)
    assert abs(sum(right) / len(problems) - sum(expected) / len(problems)) < 3 * sd
    assert 0 < sum(right) < len(problems)


@pytest.mark.parametrize("rate", [0.3, 0.75])
def test_a_compound_step_is_followed_at_the_code_follow_rate(task, rate):
    written = ((p, code_teacher.write(program_of(p), "compound", random.Random(0))) for p in task.problems("validation"))
    p, steps = next((p, s) for p, s in written if s and sum(", then " in x for x in s) == 1)
    core = SimCore("sim-core", world_from({"code_follow": {"compound": rate, "atomic": 1.0}}))
    n = 400
    followed = sum(core.respond(prompts.core_messages(p, "code", render(steps)), seed=s).followed for s in range(n))
    assert abs(followed / n - rate) < 3 * math.sqrt(rate * (1 - rate) / n)


def test_the_judge_reads_code_that_sets_the_strategy_aside_as_not_followed(task):
    quiet = world_from({"core_announces_aside": False, "code_follow": {"atomic": 0.0}})
    core = SimCore("sim-core", quiet)
    p = task.problems("validation")[0]
    wrong = render(code_teacher.write(program_of(p), "wrong", random.Random(0)))
    reply, (judged, reason) = executed(core, p, wrong)
    assert reply.followed is False and "cannot" not in reply.text
    assert not judged and "order" in reason


def test_code_follow_is_outside_version_2s_hash_and_checked():
    assert WORLD_V2.hash == "35716ebe7bfb5013"
    assert world_from({"code_follow": {"compound": 0.5}}).hash != WORLD.hash
    with pytest.raises(ValueError, match="code_follow.compound"):
        world_from({"code_follow": {"compound": 1.5}})
