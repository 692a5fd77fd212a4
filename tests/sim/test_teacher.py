import collections
import re

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.answers import numbers_in
from exectune_jax.data.tasks.arith import parse_problem, run_program
from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop import prompts
from exectune_jax.gcop.strategy import OPEN, leaks, parse
from exectune_jax.sim import models, teacher
from exectune_jax.sim import follow
from exectune_jax.sim.steps import show
from exectune_jax.world import HABIT_RATE, WORLD, value_of, world_from


@pytest.fixture(scope="module")
def task():
    return tasks.get("arith", n_train=0, n_validation=240, n_test=0)


def propose(p, seed=0):
    return models.get("sim-teacher").complete(prompts.teacher_propose_messages(p, "math"), max_tokens=512,
                                              temperature=1.0, seed=seed)


def style_of(reply):
    return reply.rsplit("\nstyle: ", 1)[1]


@pytest.fixture(scope="module")
def replies(task):
    return [(p, propose(p, s)) for p in task.problems("validation") for s in range(3)]


def carry_out(p, reply):
    """The core's execution of `reply` when it carries out every step it can at all."""
    return follow.execute(reply, frozenset(numbers_in(p.prompt)), WORLD, lambda i, q: q > 0, lambda: 0)


def lowest_follow_probability(reply):
    steps = [s.rstrip(".") for s in parse(reply).steps]
    return min(follow.probability(follow.kinds(s, follow.phrases(s), WORLD), WORLD) for s in steps
               if follow.phrases(s))


def test_teacher_is_deterministic_in_messages_and_seed(task):
    p = next(p for p in task.problems("validation") if p.meta["steps"] >= 5)
    assert propose(p, 1) == propose(p, 1)
    assert len({propose(p, s) for s in range(12)}) > 2


def test_teacher_writes_every_style_in_roughly_the_intended_mix(replies):
    plain = [r for p, r in replies if not teacher.habit_sites(parse_problem(p.prompt))]
    counts = collections.Counter(style_of(r) for r in plain)
    share = {k: v / len(plain) for k, v in counts.items()}
    assert set(share) == {"atomic", "compound", "verbose", "vague", "wrong", "leak"}
    assert 0.35 <= share["atomic"] <= 0.65
    assert all(v >= 0.02 for v in share.values())


def test_teacher_habitually_folds_a_multiplication_into_the_step_that_uses_it(replies):
    habitual = [(p, r) for p, r in replies if teacher.habit_sites(parse_problem(p.prompt))]
    share = collections.Counter(style_of(r) for _, r in habitual)["compound"] / len(habitual)
    rate = value_of(WORLD, HABIT_RATE)
    assert abs(share - rate) <= 3 * (rate * (1 - rate) / len(habitual)) ** 0.5
    folding = models.get("sim-teacher", world_from({HABIT_RATE: 0.8}))  # version 3's habit: mostly folds
    many = [(p, folding.complete(prompts.teacher_propose_messages(p, "math"), temperature=1.0, seed=0))
            for p in {p.id: p for p, _ in habitual}.values()]
    assert collections.Counter(style_of(r) for _, r in many).most_common(1)[0][0] == "compound"
    for p, r in habitual + many:
        if style_of(r) == "compound":
            program = parse_problem(p.prompt)
            j = teacher.habit_sites(program)[0]
            a, b = (str(program.quantities[int(ref[1:])]) for ref in program.ops[j][1:])
            assert f"Multiply {a} by {b}, then " in r


def test_style_line_is_outside_a_well_formed_block(replies):
    for _, reply in replies:
        assert parse(reply).ok, reply
        assert reply.index("</strategy>") < reply.index("\nstyle: ")


def test_atomic_strategies_compute_the_gold_answer_when_followed(replies):
    for p, reply in replies:
        if style_of(reply) == "atomic":
            run = carry_out(p, reply)
            assert run.followed_all and run.claim is None and show(run.done[-1].result) == p.answer
            assert lowest_follow_probability(reply) == WORLD.follow_atomic


@pytest.mark.parametrize("style", ["compound", "verbose", "vague"])
def test_compound_verbose_and_vague_strategies_hold_a_step_the_core_follows_less_often(replies, style):
    chosen = [(p, r) for p, r in replies if style_of(r) == style]
    assert chosen
    for p, reply in chosen:
        assert lowest_follow_probability(reply) <= getattr(WORLD, f"follow_{style}"), reply


def test_wrong_strategies_are_followable_but_reach_another_answer(replies):
    for p, reply in [(p, r) for p, r in replies if style_of(r) == "wrong"]:
        run = carry_out(p, reply)
        assert run.followed_all and show(run.done[-1].result) != p.answer


def test_leaking_strategies_state_the_answer_and_are_caught(replies):
    for p, reply in [(p, r) for p, r in replies if style_of(r) == "leak"]:
        assert carry_out(p, reply).claim == p.answer
        assert leaks(reply, p, "math") is not None


def test_only_leaking_strategies_leak(replies):
    assert all(leaks(r, p, "math") is None for p, r in replies if style_of(r) != "leak")


def test_revisions_move_towards_atomic(task):
    feedback = "The core followed your strategy and got it wrong: wrong answer 1 != 2."
    styles = []
    for p in task.problems("validation")[:120]:
        reply = propose(p)
        revise = prompts.teacher_revise_messages(p, "math", reply.rsplit("\nstyle", 1)[0], feedback)
        styles.append(style_of(models.get("sim-teacher").complete(revise, max_tokens=512, temperature=1.0, seed=0)))
    assert styles.count("atomic") / len(styles) >= 0.7
    assert "leak" not in styles


def test_compound_renumbers_later_references(task):
    for p in task.problems("validation"):
        for seed in range(3):
            reply = propose(p, seed)
            if style_of(reply) == "compound":
                steps = parse(reply).steps
                for i, s in enumerate(steps):
                    refs = [int(n) for n in re.findall(r"result of step (\d+)", s)]
                    assert all(1 <= r <= i for r in refs), reply


def test_teacher_writes_a_generic_plan_for_problems_it_cannot_read():
    p = Problem(id="g", prompt="A robe takes 2 bolts of blue fiber and half that much white fiber.", answer="3",
                split="test")
    reply = propose(p)
    assert parse(reply).ok and reply.endswith("style: generic")
    code = models.get("sim-teacher").complete(prompts.teacher_propose_messages(p, "code"), max_tokens=64,
                                              temperature=1.0, seed=0)
    assert code.startswith(OPEN) and code.endswith("style: generic")


def test_program_round_trip_is_what_the_teacher_relies_on(task):
    p = task.problems("validation")[5]
    assert show(run_program(parse_problem(p.prompt))[-1]) == p.answer
