"""sim-judge decides "followed" from the texts alone; measured against sim-core's own truth."""

from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.gcop import prompts
from exectune_jax.gcop.follow import agreement, parse_judge_reply
from exectune_jax.gcop.strategy import render
from exectune_jax.sim import models
from exectune_jax.sim.teacher import atomic
from exectune_jax.world import WORLD, WORLD_V2


def judged(problem, strategy, seed=0, world=WORLD):
    reply = models.get("sim-core", world).respond(prompts.core_messages(problem, "math", strategy), seed=seed)
    answer = models.get("sim-judge", world).complete(
        prompts.judge_follow_messages(problem.prompt, strategy, reply.text))
    return parse_judge_reply(answer), reply.followed


def test_where_the_core_announces_an_aside_sim_judge_agrees_with_its_truth_on_the_teachers_mixed_styles():
    """Version 2's core says when it sets a strategy aside, and its judge has no error rates; the
    judge's reading is then exact (version 3's errors: tests/sim/test_judge_errors.py)."""
    problems = tasks.get("arith", n_train=0, n_validation=300, n_test=0).problems("validation")
    teacher = models.get("sim-teacher")
    pairs = []
    for k, p in enumerate(problems):
        strategy = teacher.complete(prompts.teacher_propose_messages(p, "math"), temperature=1.0, seed=k)
        parsed, truth = judged(p, strategy, world=WORLD_V2)
        assert parsed is not None
        pairs.append((parsed[0], truth))
    got = agreement(pairs)
    assert 0 < sum(t for _, t in pairs) < len(pairs)  # both kinds occur
    assert got["agreement"] >= 0.98 and got["kappa"] >= 0.95


def test_sim_judge_says_no_to_a_response_that_does_other_steps_than_the_strategy():
    p = tasks.get("arith", n_train=0, n_validation=0, n_test=1).problems("test")[0]
    strategy = render(atomic(parse_problem(p.prompt)))
    (verdict, _), truth = judged(p, strategy)
    assert truth and verdict == "yes"
    reply = models.get("sim-core").respond(prompts.core_messages(p, "math", strategy)).text
    first = next(line for line in reply.splitlines() if line.startswith("Step 1:"))
    a, op, b = first.split()[2:5]
    swapped = reply.replace(first, f"Step 1: {b} {op} {a} = 0." if op in "-/" else f"Step 1: {a} - {b} = 0.")
    answer = models.get("sim-judge").complete(prompts.judge_follow_messages(p.prompt, strategy, swapped))
    assert parse_judge_reply(answer)[0] == "no"


def test_sim_judge_answers_other_prompts_outside_the_fixed_form():
    answer = models.get("sim-judge").complete([{"role": "user", "content": "Grade this strategy 0-10."}])
    assert parse_judge_reply(answer) is None
