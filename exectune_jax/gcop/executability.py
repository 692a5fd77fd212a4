"""Executability with honest intervals, and the mixture it governs accuracy through.

e(x, s), the probability that the core follows a strategy, is estimated per problem as the
fraction of its guided executions that the follow check (gcop/follow.py) says were followed;
the guide-averaged executability α is the mean of those over problems. Executions whose call
failed (`correct is None`) or whose follow check could not decide (`followed == "unknown"`)
are excluded and counted, never scored.

On the same decided executions the accuracy splits exactly into the paper's mixture
(PAPER.md: success = followed and right, or ignored and right on its own):

    accuracy = α · P(correct | followed) + (1 − α) · P(correct | not followed)

with every term guide-averaged the same way (each problem weighs 1, split over its samples), so
the identity holds on the counts, not only in expectation (`mixture_counts`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from exectune_jax.gcop.execute import Outcome


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n_problems: int  # problems with at least one decided execution
    n_calls: int  # decided executions
    n_failed: int  # executions whose call failed (excluded)
    n_unknown: int = 0  # executions the follow check could not decide (excluded)


@dataclass(frozen=True)
class Counts:
    """One problem's decided executions: followed (f) or not (m - f), and how many were right."""

    followed: int
    correct_followed: int
    not_followed: int
    correct_not_followed: int

    @property
    def decided(self) -> int:
        return self.followed + self.not_followed


@dataclass(frozen=True)
class Mixture:
    """α, P(correct | followed), P(correct | not followed) as exact fractions over problems."""

    alpha: Fraction
    p_followed: Fraction | None  # None when no execution was followed
    p_not_followed: Fraction | None  # None when every execution was followed
    accuracy: Fraction
    followed_weight: Fraction  # problem-units behind p_followed (sum over problems of f/m)
    not_followed_weight: Fraction
    n_problems: int


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion; stays inside [0, 1] and behaves at 0 and n.
    `n` may be fractional (problem-units of a guide-averaged rate)."""
    if n <= 0:
        raise ValueError("wilson interval needs n > 0")
    if not 0 <= successes <= n * (1 + 1e-12):
        raise ValueError(f"successes={successes} outside [0, {n}]")
    p = min(1.0, successes / n)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def counts(outcomes: Sequence[Outcome]) -> Counts:
    """The decided executions of one problem (failed calls and unknown checks left out)."""
    decided = [o for o in outcomes if o.correct is not None and o.followed in ("yes", "no")]
    yes = [o for o in decided if o.followed == "yes"]
    no = [o for o in decided if o.followed == "no"]
    return Counts(len(yes), sum(bool(o.correct) for o in yes), len(no), sum(bool(o.correct) for o in no))


def mixture_counts(per_problem: Sequence[Counts]) -> Mixture:
    """The mixture from per-problem counts, exactly; problems with nothing decided are left out.

    Problem x with m decided executions, f of them followed, weighs 1: its followed executions
    count f/m towards α, and P(correct | followed) is (sum of c_f/m) / (sum of f/m), so
    α · p_f + (1 − α) · p_nf is the mean over problems of (c_f + c_nf) / m, the accuracy.
    """
    rows = [c for c in per_problem if c.decided]
    n = len(rows)
    if not n:
        return Mixture(Fraction(0), None, None, Fraction(0), Fraction(0), Fraction(0), 0)
    w_f = sum((Fraction(c.followed, c.decided) for c in rows), Fraction(0))
    w_n = sum((Fraction(c.not_followed, c.decided) for c in rows), Fraction(0))
    c_f = sum((Fraction(c.correct_followed, c.decided) for c in rows), Fraction(0))
    c_n = sum((Fraction(c.correct_not_followed, c.decided) for c in rows), Fraction(0))
    return Mixture(alpha=w_f / n, p_followed=c_f / w_f if w_f else None,
                   p_not_followed=c_n / w_n if w_n else None, accuracy=(c_f + c_n) / n,
                   followed_weight=w_f, not_followed_weight=w_n, n_problems=n)


def rate(p: Fraction | None, weight: Fraction) -> dict:
    """A mixture term as {value, ci, n}: n is its problem-units, the interval Wilson's over them."""
    if p is None or not weight:
        return {"value": None, "ci": None, "n": float(weight)}
    return {"value": float(p), "ci": list(wilson(float(p * weight), float(weight))), "n": float(weight)}


def mixture(outcomes_by_problem: Mapping[str, Sequence[Outcome]]) -> dict:
    """The row's mixture: α, P(correct | followed), P(correct | not followed), each with a
    problem-level Wilson interval, the accuracy they compose to, and what was left out."""
    mix = mixture_counts([counts(o) for o in outcomes_by_problem.values()])
    calls = [o for os_ in outcomes_by_problem.values() for o in os_]
    return {
        "alpha": rate(mix.alpha if mix.n_problems else None, Fraction(mix.n_problems)),
        "p_correct_followed": rate(mix.p_followed, mix.followed_weight),
        "p_correct_not_followed": rate(mix.p_not_followed, mix.not_followed_weight),
        "accuracy": float(mix.accuracy) if mix.n_problems else None,
        "problems": mix.n_problems,
        "unknown": sum(o.correct is not None and o.followed == "unknown" for o in calls),
        "failed": sum(o.correct is None for o in calls),
    }


def per_problem(outcomes_by_problem: Mapping[str, Sequence[Outcome]]) -> dict[str, float]:
    """Problem id -> fraction of its decided executions that were followed (others omitted)."""
    out = {}
    for pid, outcomes in outcomes_by_problem.items():
        c = counts(outcomes)
        if c.decided:
            out[pid] = c.followed / c.decided
    return out


def executability(outcomes_by_problem: Mapping[str, Sequence[Outcome]]) -> Estimate:
    """Guide-averaged executability α: the mean over problems of per-problem executability.

    The interval is a Wilson interval over problems (the mean times n_problems as the success
    count). Executions of one problem are correlated, so problems, not calls, are the
    independent units; a [0, 1] variable's variance is at most p(1-p), so this is conservative.
    """
    rates = per_problem(outcomes_by_problem)
    calls = [o for outcomes in outcomes_by_problem.values() for o in outcomes]
    n_failed = sum(o.correct is None for o in calls)
    n_unknown = sum(o.correct is not None and o.followed not in ("yes", "no") for o in calls)
    if not rates:
        return Estimate(0.0, 0.0, 1.0, 0, 0, n_failed, n_unknown)
    mean = sum(rates.values()) / len(rates)
    lo, hi = wilson(min(len(rates), mean * len(rates)), len(rates))
    return Estimate(mean, lo, hi, len(rates), len(calls) - n_failed - n_unknown, n_failed, n_unknown)
