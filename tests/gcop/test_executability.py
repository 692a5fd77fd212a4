import pytest

from exectune_jax.gcop.execute import Outcome
from exectune_jax.gcop.executability import executability, per_problem, wilson


def out(correct):
    return Outcome(correct, None, "", 10, 5, 0.001, None if correct is not None else "timeout", False)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(7, 10, 0.3968, 0.8922), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (50, 100, 0.4038, 0.5962)],
)
def test_wilson_matches_hand_checked_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_refuses_empty_or_impossible_counts():
    with pytest.raises(ValueError):
        wilson(0, 0)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_executability_averages_problems_and_excludes_failed_calls():
    est = executability({
        "a": [out(True), out(True), out(None)],  # 1.0 over 2 scored calls
        "b": [out(False), out(True)],  # 0.5
        "c": [out(None)],  # no scored call: excluded
    })
    assert est.mean == pytest.approx(0.75)
    assert (est.n_problems, est.n_calls, est.n_failed) == (2, 4, 2)
    assert (est.lo, est.hi) == pytest.approx(wilson(1.5, 2))
    assert est.lo < est.mean < est.hi


def test_per_problem_rates_omit_problems_without_a_scored_call():
    assert per_problem({"a": [out(True), out(False)], "b": [out(None)]}) == {"a": 0.5}


def test_executability_of_nothing_scored_is_the_uninformative_interval():
    est = executability({"a": [out(None)]})
    assert (est.mean, est.lo, est.hi, est.n_problems, est.n_failed) == (0.0, 0.0, 1.0, 0, 1)
