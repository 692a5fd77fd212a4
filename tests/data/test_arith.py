import re
from fractions import Fraction

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks import arith
from exectune_jax.data.tasks.base import DataError, Problem


@pytest.fixture(scope="module")
def task():
    return tasks.get("arith", n_train=400, n_validation=60, n_test=120)


def test_splits_have_requested_sizes_and_share_no_problem_text(task):
    splits = {s: task.problems(s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 400, "validation": 60, "test": 120}
    texts = [p.prompt for v in splits.values() for p in v]
    assert len(set(texts)) == len(texts)
    assert all(p.split == s for s, v in splits.items() for p in v)
    assert len({p.id for v in splits.values() for p in v}) == len(texts)


def test_splits_are_deterministic_and_test_split_ignores_train_size(task):
    again = tasks.get("arith", n_train=50, n_validation=60, n_test=120)
    assert again.problems("test") == task.problems("test")
    assert tasks.get("arith", seed=1, n_test=120).problems("test") != task.problems("test")


def test_difficulty_is_spread_evenly_over_the_step_range(task):
    steps = [p.meta["steps"] for p in task.problems("test")]
    assert {k: steps.count(k) for k in range(2, 8)} == {k: 20 for k in range(2, 8)}


def test_gold_program_has_steps_ops_and_yields_the_integer_answer(task):
    for p in task.problems("train"):
        program = arith.Program(tuple(tuple(op) for op in p.meta["program"]), tuple(p.meta["quantities"]))
        results = arith.run_program(program)
        assert len(results) == p.meta["steps"]
        assert all(r.denominator == 1 and r > 0 for r in results), p.prompt
        assert str(int(results[-1])) == p.answer


def test_quantities_are_the_numbers_of_the_text_in_order(task):
    for p in task.problems("validation"):
        assert [int(n) for n in re.findall(r"\d+", p.prompt)] == p.meta["quantities"]


def test_parse_problem_recovers_every_gold_program(task):
    for split in ("train", "validation", "test"):
        for p in task.problems(split):
            parsed = arith.parse_problem(p.prompt)
            assert parsed is not None, p.prompt
            assert [list(op) for op in parsed.ops] == p.meta["program"], p.prompt


def test_parse_problem_rejects_text_that_is_not_an_arith_problem():
    assert arith.parse_problem("Janet has 16 ducks and a farm. How much does she make?") is None
    assert arith.parse_problem("") is None


def test_templates_put_a_before_b_so_quantity_order_is_text_order():
    for phrasings in arith.TEMPLATES.values():
        for t in phrasings:
            if "{b}" in t:
                assert t.index("{a}") < t.index("{b}")


def test_many_templates_and_entities_appear(task):
    texts = " ".join(p.prompt for p in task.problems("train"))
    assert sum(name in texts for name, _ in arith.NAMES) >= 25
    assert sum(its in texts for _, its in arith.ITEMS) >= 18


def test_check_accepts_the_gold_answer_and_names_wrong_ones(task):
    p = task.problems("test")[0]
    assert task.check(p, f"Thinking... The answer is {p.answer}.").correct
    wrong = task.check(p, f"The answer is {int(p.answer) + 1}.")
    assert not wrong.correct and wrong.reason == f"wrong answer {int(p.answer) + 1} != {p.answer}"
    assert task.check(p, "I do not know.").reason == "no answer found"


@pytest.mark.parametrize(
    "options", [{"min_steps": 0}, {"min_steps": 5, "max_steps": 3}, {"max_steps": 13}, {"n_train": -1}]
)
def test_bad_options_are_user_errors_naming_the_option(options):
    with pytest.raises(DataError, match="|".join(options)):
        tasks.get("arith", **options)


def test_apply_op_refuses_division_by_zero():
    with pytest.raises(ZeroDivisionError):
        arith.apply_op("divide", Fraction(3), Fraction(0))


def test_problem_is_a_plain_frozen_record():
    p = Problem(id="x", prompt="q", answer="1", split="test")
    assert p.meta == {}
    with pytest.raises(AttributeError):
        p.answer = "2"
