"""The method table (`exectune eval`): every guide, and the core alone, on the same problems.

Each guide row samples one strategy per problem from its guide (greedy), the core executes it,
and the row reports accuracy and executability with 95% Wilson intervals, how often the guide
wrote a well-formed, non-leaking strategy, what the core spent, and a paired exact McNemar test
of ExecTune against the row on the same problems. Failed API calls are never scored as wrong:
they are excluded and counted.

results.json holds no timings and no absolute paths, so the same seed gives the same file
whether or not the API misbehaved along the way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from exectune_jax.config import Config
from exectune_jax.data.tasks import Problem
from exectune_jax.gcop import strategy
from exectune_jax.gcop.execute import Outcome, execute_many
from exectune_jax.gcop.executability import executability, wilson

REFERENCE = "exectune"
ROW_ORDER = ("core_only", "base_guide", "sft_unfiltered", "exectune_sft", "advisor_rl",
             "exectune", "core_strong")
ROW_FIELDS = ("method", "n", "accuracy", "accuracy_ci", "executability", "executability_ci",
              "format_valid", "leak_rate", "core_input_tokens", "core_output_tokens", "usd_total",
              "usd_per_problem", "guide_tokens", "failed_calls", "mcnemar_p_vs_exectune")


# ---------------------------------------------------------------------------------------------
# Statistics (pure)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts b and c.

    Under H0 each discordant pair is a fair coin, so p = 2 * P(Binom(b+c, 1/2) <= min(b, c)),
    capped at 1. Computed with integers, so it is exact for any n.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def discordant(ref: Mapping[str, bool], other: Mapping[str, bool]) -> tuple[int, int]:
    """(ref right & other wrong, ref wrong & other right) over problems scored in both."""
    shared = ref.keys() & other.keys()
    b = sum(ref[i] and not other[i] for i in shared)
    c = sum(other[i] and not ref[i] for i in shared)
    return b, c


# ---------------------------------------------------------------------------------------------
# One row


@dataclass(frozen=True)
class RowData:
    """Everything measured for one method: per problem, the guide text and the core outcomes."""

    method: str
    problems: Sequence[Problem]
    texts: Sequence[str | None] | None  # guide outputs; None for a core-alone row
    outcomes: Sequence[Sequence[Outcome]]  # per problem, eval.samples executions
    guide_tokens: int
    family: str

    def first_correct(self) -> dict[str, bool]:
        """Problem id -> correctness of the first execution, for problems whose call succeeded."""
        return {p.id: o[0].correct for p, o in zip(self.problems, self.outcomes)
                if o[0].correct is not None}


def ci(k: int, n: int) -> list[float]:
    return list(wilson(k, n)) if n else [0.0, 1.0]


def row_summary(data: RowData, ref: Mapping[str, bool] | None) -> dict:
    """The row's numbers; `ref` is the reference row's first_correct (None: no test)."""
    first = data.first_correct()
    n, k = len(first), sum(first.values())
    flat = [o for os_ in data.outcomes for o in os_]
    scored = [o for o in flat if o.correct is not None]
    usd = sum(o.usd for o in flat)
    row = {
        "method": data.method,
        "n": n,
        "accuracy": k / n if n else 0.0,
        "accuracy_ci": ci(k, n),
        "executability": None,
        "executability_ci": None,
        "format_valid": None,
        "leak_rate": None,
        "core_input_tokens": sum(o.input_tokens for o in flat),
        "core_output_tokens": sum(o.output_tokens for o in flat),
        "usd_total": usd,
        "usd_per_problem": usd / len(scored) if scored else 0.0,
        "guide_tokens": data.guide_tokens,
        "failed_calls": len(flat) - len(scored),
        "mcnemar_p_vs_exectune": None,
    }
    if data.texts is not None:
        est = executability({p.id: o for p, o in zip(data.problems, data.outcomes)})
        row["executability"] = est.mean
        row["executability_ci"] = [est.lo, est.hi]
        texts = [t or "" for t in data.texts]
        row["format_valid"] = sum(strategy.parse(t).ok for t in texts) / len(texts)
        row["leak_rate"] = sum(strategy.leaks(t, p, data.family) is not None
                               for t, p in zip(texts, data.problems)) / len(texts)
    if ref is not None and data.method != REFERENCE:
        row["mcnemar_p_vs_exectune"] = mcnemar_exact(*discordant(ref, first))
    return row


def table(rows: Sequence[Mapping]) -> str:
    """results.md: one markdown table, percentages with intervals, cost in USD."""

    def pct(v, interval):
        if v is None:
            return "–"
        return f"{100 * v:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"

    def opt(v, f):
        return "–" if v is None else f(v)

    head = ("| method | n | accuracy % [95% CI] | executability % [95% CI] | format valid % | "
            "leak % | core tokens in/out | USD total | USD / problem | guide tokens | "
            "failed calls | McNemar p vs exectune |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], str(r["n"]), pct(r["accuracy"], r["accuracy_ci"]),
            pct(r["executability"], r["executability_ci"]),
            opt(r["format_valid"], lambda v: f"{100 * v:.1f}"),
            opt(r["leak_rate"], lambda v: f"{100 * v:.1f}"),
            f"{r['core_input_tokens']}/{r['core_output_tokens']}",
            f"{r['usd_total']:.4f}", f"{r['usd_per_problem']:.6f}", str(r["guide_tokens"]),
            str(r["failed_calls"]), opt(r["mcnemar_p_vs_exectune"], lambda v: f"{v:.3g}"),
        ]) + " |")
    return "\n".join(lines) + "\n"
