"""The cost-sensitive utility J = V − λ·T of the paper, per row of the method table.

V is a row's accuracy (a fraction, pass@1) and T its inference cost per problem in USD: the
core's bill per scored execution plus the guide's generated tokens at `eval.guide_usd_per_mtok`
(self-hosted: 0 by default), as break-even prices them. What measuring α cost (the follow
check's judge) is left out: a deployed guide pays no judge. λ is in accuracy per USD per
problem, so λ = 1000 makes USD 0.001 per problem weigh as much as getting every problem right.

Which row is best depends on λ: at λ = 0 the most accurate, at a large λ the cheapest. Between
two rows the order flips at λ* = (V_a − V_b) / (T_a − T_b) when the more accurate one is dearer
(`crossover`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exectune_jax.break_even import per_problem

DEFINITION = "J = accuracy - lambda * USD per problem (accuracy as a fraction, lambda per USD)"


def utility(accuracy: float, usd_per_problem: float, lam: float) -> float:
    """J of one row at one λ."""
    return accuracy - lam * usd_per_problem


def row_utilities(row: Mapping, lambdas: Sequence[float], guide_usd_per_mtok: float = 0.0) -> list[float]:
    """J of a results row at each λ of `lambdas`; T includes the guide's tokens at its price."""
    cost = per_problem(row, guide_usd_per_mtok)
    return [utility(row["accuracy"], cost, lam) for lam in lambdas]


def best_per_lambda(rows: Sequence[Mapping]) -> list[str]:
    """The method with the highest J at each λ (rows carry `utility`, one J per λ); ties go to
    the row listed first."""
    if not rows:
        return []
    return [max(rows, key=lambda r: r["utility"][i])["method"] for i in range(len(rows[0]["utility"]))]


def crossover(a: Mapping, b: Mapping, guide_usd_per_mtok: float = 0.0) -> float | None:
    """The λ ≥ 0 at which rows `a` and `b` have the same J, or None when one is at least as
    good at every λ (it is no less accurate and no dearer)."""
    ta, tb = per_problem(a, guide_usd_per_mtok), per_problem(b, guide_usd_per_mtok)
    if ta == tb:
        return None
    lam = (a["accuracy"] - b["accuracy"]) / (ta - tb)
    return lam if lam > 0 else None


def table(rows: Sequence[Mapping], lambdas: Sequence[float]) -> str:
    """results.md's J table: one column per λ, J in accuracy points, the best row in bold."""
    best = best_per_lambda(rows)
    head = "| method | " + " | ".join(f"J at λ={lam:g}" for lam in lambdas) + " |"
    lines = [head, "|---|" + "---:|" * len(lambdas)]
    for r in rows:
        cells = [f"**{100 * j:.1f}**" if best[i] == r["method"] else f"{100 * j:.1f}"
                 for i, j in enumerate(r["utility"])]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
