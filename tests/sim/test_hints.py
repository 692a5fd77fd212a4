"""`named_op_value`: an operation the text names correctly spares the core's own reasoning part of
its difficulty even where the core did not carry the step out; a wrongly named one does nothing,
and at 0 (version 2) nothing changes."""

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.gcop import prompts
from exectune_jax.sim import guide
from exectune_jax.sim.core import SimCore
from exectune_jax.sim.hints import named_correctly
from exectune_jax.sim.steps import render_operand, render_step
from exectune_jax.world import world_from

MARIA = parse_problem("Maria has 12 apples. She buys 3 boxes of apples with 5 apples in each. "
                      "How many apples does Maria have now?")  # 3 * 5, then 12 + 15
UNREADABLE = "First think about adding 7777 to 1."  # a number not in any problem: never carried out
_OTHER = {"add": "multiply", "subtract": "add", "multiply": "add", "divide": "multiply"}
N = 300


@pytest.mark.parametrize(("text", "named"), [
    ("Multiply 3 by 5. Add the result of step 1 to 12.", {0, 1}),
    ("Multiply 5 by 3.", {0}),  # order does not count for a product
    ("Then think about adding 15 to 12.", {1}),  # an intermediate amount written out
    ("Then think about adding the amount so far to 12.", {1}),
    ("Add 3 to 5. Subtract 12 from the amount so far.", set()),  # wrong operations
    ("Multiply 3 by 12.", set()),  # the right operation on the wrong numbers
    ("Read the story carefully.", set()),
])
def test_which_operations_a_text_names_correctly(text, named):
    assert named_correctly(text, MARIA) == named


@pytest.fixture(scope="module")
def problems():
    return tasks.get("arith", n_train=N, n_validation=0, n_test=0).problems("train")


def hint(p, ops):
    """Advice the core cannot start (its first sentence), then the given operations as steps."""
    q = parse_problem(p.prompt).quantities
    return " ".join([UNREADABLE, *(render_step(op, render_operand(a, q), render_operand(b, q)) for op, a, b in ops)])


def accuracy(world, rows):
    core = SimCore("sim-core", world)
    task = tasks.get("arith")
    return sum(task.check(p, core.respond(prompts.core_messages(p, "math", t)).text).correct
               for p, t in rows) / len(rows)


def first_op_rows(problems, wrong=False):
    rows = []
    for p in problems:
        op, a, b = parse_problem(p.prompt).ops[0]
        rows.append((p, hint(p, [(_OTHER[op] if wrong else op, a, b)])))
    return rows


def test_a_correct_operation_the_core_did_not_carry_out_raises_its_own_accuracy(problems):
    rows = first_op_rows(problems)
    assert all(not SimCore("sim-core").respond(prompts.core_messages(p, "math", t)).carried_out for p, t in rows)
    without, half, full = (accuracy(world_from({"named_op_value": v}), rows) for v in (0.0, 0.5, 1.0))
    alone = accuracy(world_from({}), [(p, None) for p in problems])
    print(f"\none correct operation named, not carried out ({N} problems): right {without:.3f} at value 0, "
          f"{half:.3f} at 0.5, {full:.3f} at 1; core alone {alone:.3f}")
    assert abs(without - alone) <= 0.05  # version 2: a step not carried out is no help
    assert without < half < full
    # Each operation spared at value 1 is worth the core's slope (0.09) on the problems it moves.
    assert full - without >= 0.04


def test_a_wrongly_named_operation_changes_nothing(problems):
    rows = first_op_rows(problems, wrong=True)
    core0, core1 = SimCore("sim-core", world_from({"named_op_value": 0.0})), SimCore("sim-core", world_from({"named_op_value": 1.0}))
    for p, t in rows[:80]:
        messages = prompts.core_messages(p, "math", t)
        assert core0.respond(messages) == core1.respond(messages)


def test_the_base_guides_prose_advice_is_worth_more_when_not_followed_to_the_end(problems):
    rows = [(p, guide.advice(p)) for p in problems]
    v2, valued = world_from({"version": 2}), world_from({"version": 2, "named_op_value": 0.5})
    followed = [[SimCore("sim-core", w).respond(prompts.core_messages(p, "math", t)).followed for p, t in rows]
                for w in (v2, valued)]
    assert followed[0] == followed[1]  # the value changes no follow decision
    assert sum(followed[0]) < len(rows)
    assert accuracy(valued, rows) > accuracy(v2, rows)
