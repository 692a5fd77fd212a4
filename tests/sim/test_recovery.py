"""`core_recovers`: a core that followed part of a strategy off track and then stopped re-solves the
problem from the start, right at its own rate alone, as often as the world says; at 0 (version
2) such an execution is always wrong."""

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import apply_op, operand_value, parse_problem, run_program
from exectune_jax.gcop import prompts
from exectune_jax.gcop.strategy import render
from exectune_jax.sim.core import SimCore
from exectune_jax.sim.judge import decide
from exectune_jax.sim.steps import render_operand, render_step
from exectune_jax.world import world_from

N = 300
_OTHER = {"add": "multiply", "subtract": "add", "multiply": "add", "divide": "multiply"}


@pytest.fixture(scope="module")
def off_track():
    """(problem, strategy) pairs whose first step is a wrong operation on the right numbers and
    whose second uses a number not in the problem: kept where the core carried out the first step,
    whose result is none of the problem's true amounts, and stopped at the second."""
    problems = tasks.get("arith", n_train=N, n_validation=0, n_test=0).problems("train")
    core = SimCore("sim-core", world_from({"version": 2}))
    out = []
    for p in problems:
        program = parse_problem(p.prompt)
        op, left, right = program.ops[0]
        a, b = (operand_value(r, program.quantities, []) for r in (left, right))
        wrong = render_step(_OTHER[op], render_operand(left, program.quantities),
                            render_operand(right, program.quantities))
        strategy = render([wrong, "Add 7777 to the result of step 1."])
        reply = core.respond(prompts.core_messages(p, "math", strategy))
        if reply.carried_out == 1 and apply_op(_OTHER[op], a, b) not in run_program(program):
            out.append((p, strategy))
    return out


def replies(world, rows):
    core = SimCore("sim-core", world)
    return [core.respond(prompts.core_messages(p, "math", s)) for p, s in rows]


def correct(rows, got):
    return [tasks.get("arith").check(p, r.text).correct for (p, _), r in zip(rows, got)]


def test_off_track_is_always_wrong_at_version_2s_value(off_track):
    rows = off_track
    assert len(rows) >= 200
    assert not any(correct(rows, replies(world_from({"version": 2}), rows)))


def test_a_core_that_always_recovers_is_right_at_its_own_rate_alone(off_track):
    rows = off_track
    recovered = correct(rows, replies(world_from({"core_recovers": 1.0}), rows))
    alone = correct(rows, [SimCore("sim-core").respond(prompts.core_messages(p, "math", None)) for p, _ in rows])
    print(f"\n{len(rows)} off-track executions: right {sum(recovered) / len(rows):.3f} recovering, "
          f"{sum(alone) / len(rows):.3f} alone")
    # The same latent difficulty decides both; only the core's per-sample noise (3%) differs.
    assert sum(a == b for a, b in zip(recovered, alone)) / len(rows) >= 0.9
    assert abs(sum(recovered) - sum(alone)) / len(rows) <= 0.05
    assert sum(recovered) / len(rows) > 0.5


def test_recovery_happens_at_the_stated_rate_and_a_higher_rate_recovers_a_superset(off_track):
    rows = off_track

    def restarted(rate):
        texts = [r.text for r in replies(world_from({"core_recovers": rate}), rows)]
        return {i for i, t in enumerate(texts) if "Let me work through the problem step by step." in t}

    assert restarted(0.0) == set()
    half, all_ = restarted(0.5), restarted(1.0)
    assert all_ == set(range(len(rows)))
    assert half < all_ and 0.35 <= len(half) / len(rows) <= 0.65


def test_a_recovered_execution_is_read_as_not_followed(off_track):
    rows = off_track[:40]
    world = world_from({"core_recovers": 1.0, "core_announces_aside": False})
    for (p, s), r in zip(rows, replies(world, rows)):
        assert decide(p.prompt, s, r.text, read_aside=False)[0] is False
