from fractions import Fraction

import pytest

from exectune_jax.gcop.execute import Outcome
from exectune_jax.gcop.executability import (Counts, executability, mixture, mixture_counts, per_problem,
                                             wilson)


def out(correct, followed="yes"):
    """One execution: correct True/False/None (None = the call failed), followed yes/no/unknown."""
    failed = correct is None
    return Outcome(correct, None, "", 10, 5, 0.001, "timeout" if failed else None, False,
                   followed=None if failed else followed)


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


def test_executability_is_the_followed_fraction_not_the_correct_fraction():
    est = executability({
        "a": [out(True, "yes"), out(False, "yes"), out(None)],  # followed 2 of 2 decided: 1.0
        "b": [out(True, "no"), out(True, "yes")],  # 0.5, although both were right
        "c": [out(True, "unknown")],  # undecided: excluded and counted
        "d": [out(None)],  # failed call: excluded and counted
    })
    assert est.mean == pytest.approx(0.75)
    assert (est.n_problems, est.n_calls, est.n_failed, est.n_unknown) == (2, 4, 2, 1)
    assert (est.lo, est.hi) == pytest.approx(wilson(1.5, 2))
    assert est.lo < est.mean < est.hi


def test_per_problem_rates_omit_problems_without_a_decided_execution():
    assert per_problem({"a": [out(True, "yes"), out(False, "no")], "b": [out(None)],
                        "c": [out(True, "unknown")]}) == {"a": 0.5}


def test_executability_of_nothing_decided_is_the_uninformative_interval():
    est = executability({"a": [out(None)]})
    assert (est.mean, est.lo, est.hi, est.n_problems, est.n_failed) == (0.0, 0.0, 1.0, 0, 1)


# hand-made per-problem counts: (followed, correct|followed, not followed, correct|not followed)
HAND = [Counts(1, 1, 0, 0), Counts(0, 0, 1, 1), Counts(0, 0, 1, 0), Counts(1, 0, 0, 0),
        Counts(2, 2, 1, 0), Counts(0, 0, 3, 2), Counts(1, 1, 2, 1), Counts(0, 0, 0, 0)]


def test_mixture_identity_holds_exactly_on_hand_made_counts():
    mix = mixture_counts(HAND)
    # by hand over the 7 problems with a decided execution (the last has none):
    # alpha = (1 + 0 + 0 + 1 + 2/3 + 0 + 1/3) / 7 = 3/7
    assert mix.alpha == Fraction(3, 7) and mix.n_problems == 7
    # correct | followed: (1 + 0 + 2/3 + 1/3) / 3 = 2/3; correct | not: (1 + 0 + 0 + 2/3 + 1/3) / 4 = 1/2
    assert mix.p_followed == Fraction(2, 3) and mix.p_not_followed == Fraction(1, 2)
    accuracy = sum(Fraction(c.correct_followed + c.correct_not_followed, c.decided) for c in HAND if c.decided) / 7
    assert mix.accuracy == accuracy == Fraction(4, 7)
    assert mix.alpha * mix.p_followed + (1 - mix.alpha) * mix.p_not_followed == mix.accuracy


def test_mixture_with_one_sample_per_problem_is_plain_counts():
    rows = [Counts(1, 1, 0, 0)] * 6 + [Counts(1, 0, 0, 0)] * 2 + [Counts(0, 0, 1, 1)] * 3 + [Counts(0, 0, 1, 0)]
    mix = mixture_counts(rows)
    assert (mix.alpha, mix.p_followed, mix.p_not_followed, mix.accuracy) == (
        Fraction(8, 12), Fraction(6, 8), Fraction(3, 4), Fraction(9, 12))


def test_mixture_terms_without_executions_are_none_not_zero():
    mix = mixture_counts([Counts(2, 1, 0, 0)])
    assert mix.alpha == 1 and mix.p_followed == Fraction(1, 2) and mix.p_not_followed is None


def test_mixture_of_outcomes_excludes_and_counts_failed_and_undecided_executions():
    row = mixture({"a": [out(True, "yes")], "b": [out(False, "no"), out(True, "unknown")],
                   "c": [out(None)]})
    assert row["alpha"]["value"] == 0.5 and row["problems"] == 2
    assert row["p_correct_followed"]["value"] == 1.0 and row["p_correct_not_followed"]["value"] == 0.0
    assert row["accuracy"] == 0.5 and (row["unknown"], row["failed"]) == (1, 1)
    assert row["alpha"]["ci"] == pytest.approx(list(wilson(1, 2)))
