"""(problem, strategy) -> one core call through the pool -> a verified `Outcome`.

A failed call (rate limit after all retries, budget stop, ...) is an `Outcome` with
`correct=None` and the error kind: it is never scored as a wrong answer, so an outage cannot
masquerade as a bad strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from exectune_jax.api.pool import Request, Result
from exectune_jax.data.tasks.base import Problem, Task, Verdict
from exectune_jax.gcop.prompts import core_messages
from exectune_jax.sandbox import SandboxError

_CHECK_WORKERS = 4  # code checks run sandboxed subprocesses; a few at once keep the CPUs busy


@dataclass(frozen=True)
class Outcome:
    correct: bool | None  # None when the call failed (never scored)
    answer: str | None
    reason: str
    input_tokens: int
    output_tokens: int
    usd: float
    error: str | None
    cached: bool


def requests_for(family: str, items: Sequence[tuple[Problem, str | None]], *, stage: str,
                 sample_index: int | Sequence[int] = 0, endpoint: str = "core") -> list[Request]:
    """The core requests for `items`; `sample_index` is one index for all or one per item."""
    indices = [sample_index] * len(items) if isinstance(sample_index, int) else list(sample_index)
    if len(indices) != len(items):
        raise ValueError(f"{len(indices)} sample indices for {len(items)} items")
    return [
        Request(endpoint=endpoint, messages=tuple((m["role"], m["content"]) for m in core_messages(p, family, s)),
                sample_index=i, stage=stage)
        for (p, s), i in zip(items, indices)
    ]


def outcome(result: Result, verdict: Verdict | None) -> Outcome:
    """Join a call's accounting with its verdict (None when the call failed)."""
    if not result.ok or verdict is None:
        return Outcome(None, None, f"call failed: {result.error}", result.input_tokens, result.output_tokens,
                       result.usd, result.error, result.cached)
    return Outcome(verdict.correct, verdict.extracted, verdict.reason, result.input_tokens,
                   result.output_tokens, result.usd, None, result.cached)


def priced(outcomes: Sequence[Outcome], prices, model: str) -> list[Outcome]:
    """Outcomes with USD recomputed from their tokens: a call replayed from the cache is billed
    0 by the ledger, but it costs the same to a deployment, so rows compare fairly."""
    return [replace(o, usd=prices.usd(model, o.input_tokens, o.output_tokens)) for o in outcomes]


def execute_many(pool, task: Task, items: Sequence[tuple[Problem, str | None]], *, stage: str,
                 sample_index: int | Sequence[int] = 0, endpoint: str = "core") -> list[Outcome]:
    """Execute every (problem, strategy) on the core (strategy None = core alone), in order."""
    results = pool.map(requests_for(task.family, items, stage=stage, sample_index=sample_index,
                                    endpoint=endpoint), desc=f"{stage}: core")

    def judge(pair: tuple[tuple[Problem, str | None], Result]) -> Outcome:
        (problem, _), result = pair
        if not result.ok:
            return outcome(result, None)
        try:
            return outcome(result, task.check(problem, result.text))
        except SandboxError as e:  # the checker could not run: not the answer's fault
            return Outcome(None, None, f"check failed: {e}", result.input_tokens,
                           result.output_tokens, result.usd, "sandbox", result.cached)

    pairs = list(zip(items, results))
    if task.family == "code" and len(pairs) > 1:
        with ThreadPoolExecutor(_CHECK_WORKERS) as workers:
            return list(workers.map(judge, pairs))
    return [judge(pair) for pair in pairs]
