"""Executability with honest intervals.

e(x, s) is estimated per problem as the fraction of scored core executions that were correct;
the guide-averaged executability is the mean of those over problems. Failed calls
(`correct is None`) are excluded and counted, never scored as failures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exectune_jax.gcop.execute import Outcome


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n_problems: int  # problems with at least one scored execution
    n_calls: int  # scored executions
    n_failed: int  # executions whose call failed (excluded)


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion; stays inside [0, 1] and behaves at 0 and n."""
    if n <= 0:
        raise ValueError("wilson interval needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, {n}]")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def per_problem(outcomes_by_problem: Mapping[str, Sequence[Outcome]]) -> dict[str, float]:
    """Problem id -> fraction of its scored executions that were correct (unscored ones omitted)."""
    out = {}
    for pid, outcomes in outcomes_by_problem.items():
        scored = [o.correct for o in outcomes if o.correct is not None]
        if scored:
            out[pid] = sum(scored) / len(scored)
    return out


def executability(outcomes_by_problem: Mapping[str, Sequence[Outcome]]) -> Estimate:
    """Guide-averaged executability: the mean over problems of per-problem executability.

    The interval is a Wilson interval over problems (the mean times n_problems as the success
    count). Executions of one problem are correlated, so problems, not calls, are the
    independent units; a [0, 1] variable's variance is at most p(1-p), so this is conservative.
    """
    rates = per_problem(outcomes_by_problem)
    calls = [o for outcomes in outcomes_by_problem.values() for o in outcomes]
    n_failed = sum(o.correct is None for o in calls)
    if not rates:
        return Estimate(0.0, 0.0, 1.0, 0, 0, n_failed)
    mean = sum(rates.values()) / len(rates)
    lo, hi = wilson(min(len(rates), mean * len(rates)), len(rates))
    return Estimate(mean, lo, hi, len(rates), len(calls) - n_failed, n_failed)
