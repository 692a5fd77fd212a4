"""(problem, strategy) -> one core call through the pool -> a verified `Outcome`, with its
follow check (gcop/follow.py) when a strategy was given.

A math reply cut off at max_tokens before it states an answer is wrong (CUT_BEFORE_ANSWER):
the last number of an unfinished reply is an intermediate value, and a real core that
rambles past its budget would otherwise score by luck (tests/data/real_core_replies.jsonl).

A failed call (rate limit after all retries, budget stop, ...) is an `Outcome` with
`correct=None` and the error kind: it is never scored as a wrong answer, so an outage cannot
masquerade as a bad strategy. A judge call starts as soon as its execution is back, through the
same pool, so the judge's calls overlap the core's instead of waiting for the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace

from tqdm import tqdm

from exectune_jax.api.pool import Request, Result
from exectune_jax.data.tasks.answers import states_answer
from exectune_jax.data.tasks.base import Problem, Task, Verdict
from exectune_jax.gcop import trace
from exectune_jax.gcop.follow import FollowCheck, judge_check, primary
from exectune_jax.gcop.prompts import core_messages, judge_follow_messages
from exectune_jax.sandbox import SandboxError

_CHECK_WORKERS = 4  # code checks run sandboxed subprocesses; a few at once keep the CPUs busy
CUT_OFF = ("length", "max_tokens")  # the stop reasons of a reply cut at max_tokens (OpenAI, Anthropic)
CUT_BEFORE_ANSWER = "cut off at max_tokens before an answer"


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
    response: str | None = None  # the core's reply text (None when the call failed)
    followed: str | None = None  # yes | no | unknown by api.follow_check; None: no strategy or no reply
    follow_reason: str = ""
    checks: tuple[FollowCheck, ...] = ()  # every estimator that ran on this execution

    @property
    def follow_usd(self) -> float:
        """What measuring `followed` cost (the judge call; the trace is free)."""
        return sum(c.usd for c in self.checks)


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


def verdict_of(task: Task, problem: Problem, result: Result) -> Verdict:
    """The task's check of a successful call's reply; a math reply cut off at max_tokens with
    no explicit answer is wrong, whatever its last number happens to be."""
    if (task.family == "math" and result.stop_reason in CUT_OFF
            and not states_answer(result.text or "")):
        return Verdict(False, None, CUT_BEFORE_ANSWER)
    return task.check(problem, result.text)


def outcome(result: Result, verdict: Verdict | None) -> Outcome:
    """Join a call's accounting with its verdict (None when the call failed)."""
    if not result.ok or verdict is None:
        return Outcome(None, None, f"call failed: {result.error}", result.input_tokens, result.output_tokens,
                       result.usd, result.error, result.cached)
    return Outcome(verdict.correct, verdict.extracted, verdict.reason, result.input_tokens,
                   result.output_tokens, result.usd, None, result.cached, result.text)


def priced(outcomes: Sequence[Outcome], prices, model: str, judge_model: str | None = None,
           ) -> list[Outcome]:
    """Outcomes with USD recomputed from their tokens: a call replayed from the cache is billed
    0 by the ledger, but it costs the same to a deployment, so rows compare fairly. With
    `judge_model`, the judge checks are repriced the same way."""
    def checks(o: Outcome) -> tuple[FollowCheck, ...]:
        if judge_model is None:
            return o.checks
        return tuple(replace(c, usd=prices.usd(judge_model, c.input_tokens, c.output_tokens))
                     if c.estimator == "judge" else c for c in o.checks)

    return [replace(o, usd=prices.usd(model, o.input_tokens, o.output_tokens), checks=checks(o))
            for o in outcomes]


def judge_request(problem: Problem, strategy: str, response: str, stage: str) -> Request:
    return Request(endpoint="judge", messages=judge_follow_messages(problem.prompt, strategy, response),
                   stage=f"{stage}.judge")


def follow_checks(family: str, strategy: str, result: Result, judged: Result | None,
                  ) -> tuple[FollowCheck, ...]:
    """Every estimator's verdict on one guided execution whose core call succeeded."""
    checks = []
    if judged is not None:
        checks.append(judge_check(judged.ok, judged.text, judged.error, judged.input_tokens,
                                  judged.output_tokens, judged.usd))
    if family == "math":
        checks.append(FollowCheck("trace", *trace.check(strategy, result.text or "")))
    return tuple(checks)


def _calls(pool, reqs: Sequence[Request], items, *, judging: bool, stage: str,
           desc: str) -> tuple[list[Result], dict[int, Result]]:
    """The core results in order, and the judge result of each guided execution that got one."""
    futures = [pool.submit(r) for r in reqs]
    index = {id(f): i for i, f in enumerate(futures)}
    judges: dict[int, Future] = {}
    with tqdm(total=len(futures), desc=desc, leave=False, disable=desc is None) as bar:
        for fut in as_completed(futures):
            bar.update()
            i = index[id(fut)]
            (problem, strategy), result = items[i], fut.result()
            if judging and result.ok and strategy is not None and strategy.strip():
                judges[i] = pool.submit(judge_request(problem, strategy, result.text, stage))
    return [f.result() for f in futures], {i: f.result() for i, f in judges.items()}


def execute_many(pool, task: Task, items: Sequence[tuple[Problem, str | None]], *, stage: str,
                 sample_index: int | Sequence[int] = 0, endpoint: str = "core") -> list[Outcome]:
    """Execute every (problem, strategy) on the core (strategy None = core alone), in order;
    each guided execution gets its follow check (`pool.cfg.follow_check` names the estimator
    behind `followed`; the judge runs when that is `judge` and the pool has a judge endpoint)."""
    estimator = pool.cfg.follow_check
    results, judged = _calls(pool, requests_for(task.family, items, stage=stage,
                                                sample_index=sample_index, endpoint=endpoint),
                             items, judging=estimator == "judge" and pool.has_endpoint("judge"),
                             stage=stage, desc=f"{stage}: core")

    def judge(pair: tuple[int, tuple[tuple[Problem, str | None], Result]]) -> Outcome:
        i, ((problem, strategy), result) = pair
        if not result.ok:
            return outcome(result, None)
        guided = {}
        if strategy is not None and strategy.strip():
            checks = follow_checks(task.family, strategy, result, judged.get(i))
            followed, reason = primary(checks, estimator)
            guided = {"followed": followed, "follow_reason": reason, "checks": checks}
        try:
            return replace(outcome(result, verdict_of(task, problem, result)), **guided)
        except SandboxError as e:  # the checker could not run: not the answer's fault
            return Outcome(None, None, f"check failed: {e}", result.input_tokens,
                           result.output_tokens, result.usd, "sandbox", result.cached, result.text)

    pairs = list(enumerate(zip(items, results)))
    if task.family == "code" and len(pairs) > 1:
        with ThreadPoolExecutor(_CHECK_WORKERS) as workers:
            return list(workers.map(judge, pairs))
    return [judge(pair) for pair in pairs]
