"""Rollouts: G strategies per prompt sampled on device, then labelled by the core on the host.

Sampling (`sample_rollout`) is the only device work here; labelling (`label_rollout`) is pure
host work — parse, leak check, core calls through the pool, optional judge, rewards — so the
GRPO loop can run it on a background thread while the device samples the next batch.
Everything needed to label a rollout again (after a resume) is in the rollout itself; the call
cache makes that second labelling free.

Executability e(x, s) is a probability over the core's sampling. Where the core samples
(api.core.temperature > 0), member j of a group is executed with sample index j (the request's
`seed`), so identical strategies in one group are separate draws and can be followed on one
execution and not on another; the index is a function of the row, so a resumed run sends the
same requests and the cache replays the same verdicts. A greedy core (temperature 0) answers a
prompt the same way every time: every member uses index 0, and identical strategies are one
paid call and replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import jax
import numpy as np

from exectune_jax.api.pool import Request
from exectune_jax.data.pipeline import encode_prompt
from exectune_jax.data.tasks.base import Problem, Task
from exectune_jax.gcop import prompts, strategy
from exectune_jax.gcop.execute import Outcome, execute_many
from exectune_jax.gcop.executability import Estimate, executability, wilson
from exectune_jax.models import sampler
from exectune_jax.train import rewards
from exectune_jax.train.rewards import Label, RewardSpec

STOP_STRINGS = {"guide": (strategy.CLOSE,), "advisor": ()}
# Per-step counts of what the call cache held rather than what was learned: a resumed run
# replays the calls the interrupted one paid for, so these (like timings) differ between the two.
CALL_KEYS = ("core_calls_paid", "core_calls_replayed")


@dataclass
class Rollout:
    """One batch: P problems, each prompt repeated G times, and what the policy wrote."""

    index: int  # batch number (also the sampling RNG stream)
    policy_step: int  # updates the sampling policy had received (staleness = step - this)
    problems: list[Problem]  # P
    group_size: int  # G
    prompts: list[list[int]]  # P*G prompt token ids
    completions: list[list[int]]  # P*G generated ids
    logprobs: list[np.ndarray]  # P*G, log-probs at sampling time (the ratio's pi_old)
    texts: list[str]  # P*G decoded strategies
    sample_s: float = 0.0

    def problem_of(self, i: int) -> Problem:
        return self.problems[i // self.group_size]


@dataclass
class Labelled:
    """The host's verdict on a rollout: one label, outcome and reward (None = excluded) per row."""

    labels: list[Label]
    outcomes: list[Outcome | None]  # None where the gate kept the strategy from the core
    rewards: list[float | None]
    errors: dict[str, int] = field(default_factory=dict)  # failed calls by error kind
    label_s: float = 0.0


def guide_prompt(problem: Problem, family: str, spec: RewardSpec) -> list[dict]:
    make = prompts.guide_messages if spec.messages == "guide" else prompts.advisor_messages
    return make(problem, family)


def sample_rollout(
    model, tokenizer, problems: Sequence[Problem], family: str, spec: RewardSpec, *,
    index: int, policy_step: int, group_size: int, max_new_tokens: int, temperature: float, top_p: float,
    rng: jax.Array,
) -> Rollout:
    """G completions per problem from `model` (the current or a stale policy)."""
    start = time.perf_counter()
    one = [encode_prompt(tokenizer, guide_prompt(p, family, spec)) for p in problems]
    rows = [ids for ids in one for _ in range(group_size)]
    out = sampler.generate(
        model, rows, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        stop_token_ids=model.cfg.eos_token_ids, stop_strings=STOP_STRINGS[spec.messages],
        tokenizer=tokenizer, rng=jax.random.fold_in(rng, index),
    )
    return Rollout(index, policy_step, list(problems), group_size, rows, out.tokens, out.logprobs,
                   list(out.texts), time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Labelling


@dataclass(frozen=True)
class LabelContext:
    """What labelling needs besides the rollout: pool, task, reward spec, prices, p0 cache."""

    pool: object
    task: Task
    spec: RewardSpec
    stage: str  # ledger bucket of the strategy calls
    price: Callable[[int, int], float]  # USD of a core call from its tokens (replays included)
    core_alone: rewards.CoreAloneCache | None
    core_alone_samples: int
    judge_max_tokens: int = 8


def execution_indices(rows: Sequence[int], group_size: int, core_temperature: float) -> list[int]:
    """The core sample index of each executed row: its place in its group when the core samples,
    else 0."""
    return [i % group_size if core_temperature > 0 else 0 for i in rows]


def _measure_core_alone(ctx: LabelContext, problems: Sequence[Problem]) -> None:
    """p0 for problems not measured yet: several core-only calls each, cached in the stage dir."""
    if ctx.core_alone is None:
        return
    missing = set(ctx.core_alone.missing([p.id for p in problems]))
    todo = list({p.id: p for p in problems if p.id in missing}.values())
    if not todo:
        return
    n = ctx.core_alone_samples
    items = [(p, None) for p in todo for _ in range(n)]
    outs = execute_many(ctx.pool, ctx.task, items, stage="core_only",
                        sample_index=[i % n for i in range(len(items))])
    ctx.core_alone.update({
        p.id: rewards.core_alone_rate([o.correct for o in outs[k * n:(k + 1) * n]])
        for k, p in enumerate(todo)
    })


def _judge_scores(ctx: LabelContext, rollout: Rollout, rows: Sequence[int]) -> dict[int, float | None]:
    reqs = [
        Request(endpoint="judge", stage="judge", max_tokens=ctx.judge_max_tokens,
                messages=rewards.judge_messages(rollout.problem_of(i).prompt, rollout.texts[i]))
        for i in rows
    ]
    results = ctx.pool.map(reqs)
    return {i: rewards.parse_judge_score(r.text) if r.ok else None
            for i, r in zip(rows, results, strict=True)}


def label_rollout(ctx: LabelContext, rollout: Rollout) -> Labelled:
    """Parse, leak-check, execute (behind the gate), judge and score every row of a rollout."""
    start = time.perf_counter()
    family = ctx.task.family
    n = len(rollout.texts)
    parsed = [strategy.parse(t).ok for t in rollout.texts]
    leaked = [strategy.leaks(t, rollout.problem_of(i), family) is not None
              for i, t in enumerate(rollout.texts)]
    run = [i for i in range(n) if parsed[i] or not ctx.spec.gate]
    with ThreadPoolExecutor(2) as side:
        p0_done = side.submit(_measure_core_alone, ctx, rollout.problems)
        judged = side.submit(_judge_scores, ctx, rollout, run) if ctx.spec.uses_judge else None
        executed = execute_many(ctx.pool, ctx.task,
                                [(rollout.problem_of(i), rollout.texts[i]) for i in run],
                                stage=ctx.stage,
                                sample_index=execution_indices(run, rollout.group_size,
                                                               ctx.pool.cfg.core.temperature))
        p0_done.result()
        scores = judged.result() if judged is not None else {}
    outcomes: list[Outcome | None] = [None] * n
    for i, o in zip(run, executed, strict=True):
        outcomes[i] = o
    labels = []
    for i in range(n):
        o = outcomes[i]
        p0 = ctx.core_alone.get(rollout.problem_of(i).id) if ctx.core_alone else None
        labels.append(Label(
            well_formed=parsed[i], leaked=leaked[i], executed=o is not None,
            correct=None if o is None else o.correct, core_alone=p0,
            usd=0.0 if o is None or o.correct is None else ctx.price(o.input_tokens, o.output_tokens),
            judge=scores.get(i), followed=None if o is None else o.followed,
        ))
    return Labelled(labels, outcomes, [rewards.score(lab, ctx.spec) for lab in labels],
                    failed_calls(outcomes), time.perf_counter() - start)


def failed_calls(outcomes: Sequence[Outcome | None]) -> dict[str, int]:
    """Failed core calls by error kind (an executed row whose outcome has no verdict)."""
    errors: dict[str, int] = {}
    for o in outcomes:
        if o is not None and o.correct is None:
            errors[o.error or "unknown"] = errors.get(o.error or "unknown", 0) + 1
    return errors


def call_counts(labelled: Labelled) -> dict[str, int]:
    """Strategy executions the core answered (`core_calls_paid`) and the call cache answered
    (`core_calls_replayed`: repeats of an earlier request, this batch's included)."""
    answered = [o for o in labelled.outcomes if o is not None and o.response is not None]
    paid = sum(not o.cached for o in answered)
    return {"core_calls_paid": paid, "core_calls_replayed": len(answered) - paid}


# ---------------------------------------------------------------------------------------------
# Per-step numbers


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def outcome_metrics(rollout: Rollout, labelled: Labelled, spec: RewardSpec) -> dict[str, float | None]:
    """Reward terms, validity, leaks, accuracy, executability α (interval; a gated strategy
    counts as not followed), tokens, USD, and the strategy executions the core answered
    (`core_calls_paid`) against those the call cache answered (`core_calls_replayed`: repeats of
    an earlier request, this batch's included)."""
    scored = [i for i, r in enumerate(labelled.rewards) if r is not None]
    values = [rewards.term_values(labelled.labels[i]) for i in scored]
    out: dict[str, float | None] = {
        "reward": _mean([labelled.rewards[i] for i in scored]),
        **{f"reward_{t}": _mean([v[t] for v in values]) for t in rewards.TERMS},
        "format_valid": _mean([float(lab.well_formed) for lab in labelled.labels]),
        "leak_rate": _mean([float(lab.leaked) for lab in labelled.labels]),
        "accuracy": _mean([float(bool(labelled.labels[i].correct)) for i in scored]),
        "scored": len(scored),
        "failed_calls": sum(labelled.errors.values()),
    }
    by_problem: dict[str, list[Outcome]] = {}
    for i in scored:
        o = labelled.outcomes[i] or Outcome(False, None, "malformed strategy", 0, 0, 0.0, None, False,
                                            followed="no")  # the gate kept it from the core
        by_problem.setdefault(rollout.problem_of(i).id, []).append(o)
    est = executability(by_problem)
    out.update(executability=est.mean, executability_lo=est.lo, executability_hi=est.hi,
               follow_unknown=est.n_unknown)
    called = [o for o in labelled.outcomes if o is not None and o.correct is not None]
    out.update(call_counts(labelled))
    out["core_input_tokens"] = sum(o.input_tokens for o in called)
    out["core_output_tokens"] = sum(o.output_tokens for o in called)
    out["usd"] = sum(labelled.labels[i].usd for i in scored)
    out["usd_per_strategy"] = _mean([labelled.labels[i].usd for i in scored])  # gated ones: $0
    out["usd_per_call"] = _mean([labelled.labels[i].usd for i in scored
                                 if labelled.labels[i].executed])
    out["completion_tokens"] = _mean([float(len(c)) for c in rollout.completions])
    return out


# ---------------------------------------------------------------------------------------------
# Held-out check (before / after)


@dataclass(frozen=True)
class HeldOut:
    accuracy: float
    accuracy_lo: float
    accuracy_hi: float
    executability: Estimate
    usd_per_problem: float
    format_valid: float
    leak_rate: float
    n: int
    failed: int

    def as_dict(self) -> dict:
        e = self.executability
        return {
            "accuracy": self.accuracy, "accuracy_lo": self.accuracy_lo,
            "accuracy_hi": self.accuracy_hi, "executability": e.mean, "executability_lo": e.lo,
            "executability_hi": e.hi, "usd_per_problem": self.usd_per_problem,
            "format_valid": self.format_valid, "leak_rate": self.leak_rate, "n": self.n,
            "failed": self.failed,
        }


def held_out(ctx: LabelContext, model, tokenizer, problems: Sequence[Problem], *,
             max_new_tokens: int) -> HeldOut:
    """One greedy strategy per problem, executed as deployed: no gate, the text goes to the core."""
    family = ctx.task.family
    rows = [encode_prompt(tokenizer, guide_prompt(p, family, ctx.spec)) for p in problems]
    out = sampler.generate(model, rows, max_new_tokens=max_new_tokens, temperature=0.0,
                           stop_token_ids=model.cfg.eos_token_ids,
                           stop_strings=STOP_STRINGS[ctx.spec.messages], tokenizer=tokenizer)
    outcomes = execute_many(ctx.pool, ctx.task, list(zip(problems, out.texts)), stage="rl_eval")
    scored = [(p, o) for p, o in zip(problems, outcomes, strict=True) if o.correct is not None]
    n = len(scored)
    correct = sum(bool(o.correct) for _, o in scored)
    lo, hi = wilson(correct, n) if n else (0.0, 1.0)
    return HeldOut(
        accuracy=correct / n if n else 0.0, accuracy_lo=lo, accuracy_hi=hi,
        executability=executability({p.id: [o] for p, o in scored}),
        usd_per_problem=float(np.mean([ctx.price(o.input_tokens, o.output_tokens)
                                       for _, o in scored])) if n else 0.0,
        format_valid=float(np.mean([strategy.parse(t).ok for t in out.texts])),
        leak_rate=float(np.mean([strategy.leaks(t, p, family) is not None
                                 for p, t in zip(problems, out.texts, strict=True)])),
        n=n, failed=len(problems) - n,
    )
