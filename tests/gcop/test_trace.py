"""The trace estimator: step lines of a response checked against the strategy, case by case."""

import pytest

from exectune_jax.gcop import trace
from exectune_jax.gcop.strategy import render

STRATEGY = render(["Multiply 12 by 3.", "Add 5 to the result of step 1.", "Divide the result of step 2 by 4."])
FOLLOWED = "I will follow the strategy.\nStep 1: 12 * 3 = 36.\nStep 2: 36 + 5 = 41.\nStep 3: 41 / 4 = 10.25.\nThe answer is 10.25."

CASES = [
    ("followed", STRATEGY, FOLLOWED, "yes"),
    ("followed with an arithmetic slip carried forward", STRATEGY,
     "Step 1: 12 * 3 = 37.\nStep 2: 37 + 5 = 42.\nStep 3: 42 / 4 = 10.5.\nThe answer is 10.5.", "yes"),
    ("followed, other operator glyphs", STRATEGY,
     "Step 1: 12 × 3 = 36\nStep 2: 36 + 5 = 41\nStep 3: 41 ÷ 4 = 10.25\nThe answer is 10.25.", "yes"),
    ("skipped step", STRATEGY, "Step 1: 12 * 3 = 36.\nStep 2: 36 / 4 = 9.\nThe answer is 9.", "no"),
    ("reordered steps", STRATEGY,
     "Step 1: 12 + 5 = 17.\nStep 2: 17 * 3 = 51.\nStep 3: 51 / 4 = 12.75.\nThe answer is 12.75.", "no"),
    ("reordered labels", STRATEGY,
     "Step 2: 36 + 5 = 41.\nStep 1: 12 * 3 = 36.\nStep 3: 41 / 4 = 10.25.", "no"),
    ("extra own reasoning in a step line", STRATEGY,
     "Step 1: This part scales the amount, so I multiply 12 by 3: 12 * 3 = 36. Let me double-check.\n"
     "Step 2: 36 + 5 = 41.\nStep 3: 41 / 4 = 10.25.", "no"),
    ("extra step of its own", STRATEGY, FOLLOWED.replace("The answer", "Step 4: 10.25 * 2 = 20.5.\nThe answer"), "no"),
    ("wrong operand", STRATEGY, "Step 1: 12 * 4 = 48.\nStep 2: 48 + 5 = 53.\nStep 3: 53 / 4 = 13.25.", "no"),
    ("undecidable: a compound step", render(["Multiply 12 by 3, then add 5 to that.", "Divide the result of step 1 by 4."]),
     "Step 1: 12 * 3 = 36.\nStep 2: 36 / 4 = 9.", "unknown"),
    ("undecidable: no step lines", STRATEGY, "Twelve threes are 36, plus 5 is 41, a quarter is 10.25. The answer is 10.25.",
     "unknown"),
    ("undecidable: free-form advice, not a strategy block", "Multiply 12 by 3 and go on from there.", FOLLOWED,
     "unknown"),
    ("a claim step is not a computation", render(["Multiply 12 by 3.", "The answer is 36."]),
     "Step 1: 12 * 3 = 36.\nThe strategy says the answer is 36.\nThe answer is 36.", "yes"),
]


@pytest.mark.parametrize(("case", "strategy", "response", "want"), CASES, ids=[c[0] for c in CASES])
def test_trace_checker_decides_each_case(case, strategy, response, want):
    verdict, reason = trace.check(strategy, response)
    assert verdict == want, reason
    assert reason


def test_add_and_subtract_name_their_right_operand_first():
    assert trace.read_step("Subtract 4 from the result of step 2.") == trace.Op("-", ("step", 1), 4)
    assert trace.read_step("Add $1,200 to 30.") == trace.Op("+", 30, 1200)
    assert trace.read_step("Think about the apples.") is None
