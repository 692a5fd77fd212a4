"""The base guide's competence gate: its two measures read advice as the core does, and the gate
passes advice that copies the problem's numbers and names the right operations, and fails
advice that names numbers not in the problem or wrong operations."""

import re

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.sim import guide
from exectune_jax.sim.competence import answer_followed_to_the_end, grounded_sentences, measure

MARIA = ("Maria has 12 apples. She buys 3 boxes of apples with 5 apples in each. "
         "How many apples does Maria have now?")  # 3 * 5 = 15, then 12 + 15 = 27


@pytest.mark.parametrize(("advice", "grounded", "total"), [
    ("First think about multiplying 3 by 5. Then think about adding the amount so far to 12.", 2, 2),
    ("Multiply 3 by 5. Add 15 to 12.", 2, 2),  # an earlier result written out
    ("Multiply 3 by 5. Add the result of step 1 to 12. Check your work.", 2, 2),  # commentary
    ("Multiply 4 by 5. Add the result of step 1 to 12.", 1, 2),  # 4 is not in the problem
    ("Multiply 4 by 5. Add 20 to 12.", 1, 2),  # 20: the first sentence's result as written
    ("Add the result of step 2 to 12. Multiply 3 by 5.", 1, 2),  # a step not yet done
    ("Multiply 3 by 7. Add 12 to 3.", 1, 2),
    ("Read the problem one sentence at a time.", 0, 0),
])
def test_a_sentence_is_grounded_when_it_uses_only_the_problems_numbers_or_earlier_results(advice, grounded, total):
    assert grounded_sentences(MARIA, advice) == (grounded, total)


@pytest.mark.parametrize(("advice", "answer"), [
    ("First think about multiplying 3 by 5. Then think about adding the amount so far to 12.", "27"),
    ("Multiply 3 by 5. Subtract the result of step 1 from 12.", "-3"),  # followed, wrong
    ("Multiply 3 by 5. Add 99 to the result of step 1.", None),  # cannot be carried out
    ("Read the problem carefully.", None),
])
def test_advice_followed_to_the_end_gives_what_it_says_with_no_follow_chance(advice, answer):
    assert answer_followed_to_the_end(MARIA, advice) == answer


@pytest.fixture(scope="module")
def split():
    task = tasks.get("arith", n_train=0, n_validation=200, n_test=0)
    return task, task.problems("validation")


def test_the_gate_passes_advice_that_copies_the_numbers_and_names_the_right_operations(split):
    task, problems = split
    m = measure(problems, [guide.advice(p) for p in problems], task)
    assert m["grounded_share"] == 1.0 and m["right_followed_to_the_end"] == 1.0
    assert 0.5 < m["core_alone"] < 0.9 and m["gate"] is True


def test_the_gate_fails_advice_whose_numbers_are_not_in_the_problem(split):
    task, problems = split

    def miscopied(p):  # every problem number one higher: as a model that does not copy writes
        q = parse_problem(p.prompt).quantities
        return " ".join(f"Multiply {q[0] + 1} by {q[-1] + 1}." for _ in range(3))

    m = measure(problems, [miscopied(p) for p in problems], task)
    assert m["grounded_share"] < 0.1 and m["right_followed_to_the_end"] == 0.0 and m["gate"] is False


def test_the_gate_fails_grounded_advice_that_names_wrong_operations(split):
    task, problems = split
    swapped = [re.sub(r"multiplying (.+?) by ", r"adding \1 to ", guide.advice(p)) for p in problems]
    m = measure(problems, swapped, task)
    # Not all 100%: where two sums come out equal, "an earlier amount" has no unused value left to
    # name, as the core reads it (sim/follow.py).
    assert m["grounded_share"] >= 0.9
    assert m["right_followed_to_the_end"] < m["core_alone"] and m["gate"] is False
