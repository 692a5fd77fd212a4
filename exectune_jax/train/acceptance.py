"""Stage 1: teacher-guided acceptance sampling (`exectune sample`).

The teacher proposes K strategies per training problem; the *target core* executes each one and
only strategies that are well formed, do not leak the answer and lead the core to a verified
correct answer are kept. A failed proposal goes back to the teacher with the failure, up to R
times. The point is that the guide is later trained only on strategies this core has been seen
to execute, so the data is chosen by the core, not by the teacher's taste.

A right answer does not prove the core followed the strategy: a core that cannot follow one
ignores it and solves the problem its own way, at its usual price plus the strategy's tokens.
`sample.max_cost_vs_core` adds the paper's cost-sensitive utility (J = V - lambda T) to the
check: a strategy whose execution costs more than that multiple of the core alone is rejected as
`costly` and revised. It is off by default, as in the paper, where structure-aware RL is what
removes such strategies from the guide.

Every round is one batch over all problems (proposals, then executions, then revisions), so the
pool runs the calls of every problem concurrently; the call cache makes an interrupted run cheap
to repeat, and the output files are written whole at the end (temp file, then rename).

A right answer is also not a followed strategy: every execution carries the follow check
(gcop/follow.py), the summary counts how many accepted strategies the core was seen to follow,
and `sample.require_followed` rejects the others (`not_followed`, revised like a wrong answer;
`follow_unknown` when the check could not decide: excluded and counted, not revised).

`--unfiltered` keeps every well-formed teacher strategy without executing it: the paper's
plain "SFT guide" baseline, which the filtered data is measured against.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from exectune_jax import layout, preflight, resume
from exectune_jax.api import Request, open_pool
from exectune_jax.config import Config, SampleConfig
from exectune_jax.data import tasks
from exectune_jax.data.tasks import Problem
from exectune_jax.gcop import prompts, strategy
from exectune_jax.gcop.execute import Outcome, execute_many, priced
from exectune_jax.gcop.executability import wilson
from exectune_jax.io import write_json_atomic, write_jsonl_atomic

REASONS = ("format", "leak", "wrong_answer", "costly", "not_followed", "follow_unknown", "api_failure")
REVISABLE = ("format", "leak", "wrong_answer", "costly", "not_followed")
_STYLE = re.compile(r"^\s*style:\s*([\w-]+)\s*$", re.MULTILINE | re.IGNORECASE)
_BLOCK = re.compile(r"<strategy>.*?</strategy>", re.DOTALL)


@dataclass(frozen=True)
class Candidate:
    """One teacher reply for one proposal chain (attempt k, revision r) and what became of it.

    status is "accepted", one of REASONS, or "" while still undecided (well formed, no leak,
    not yet executed).
    """

    problem: Problem
    attempt: int
    revision: int
    reply: str | None
    completion: str | None  # the canonical rendered strategy block when well formed
    style: str | None
    status: str
    detail: str
    followed: str | None = None  # the follow check over its executions: yes | no | unknown


def style_of(reply: str) -> str | None:
    """The teacher's self-reported style line (`style: atomic`) outside the strategy block."""
    m = _STYLE.search(_BLOCK.sub("", reply))
    return m.group(1).lower() if m else None


def judge_reply(problem: Problem, family: str, attempt: int, revision: int,
                ok: bool, reply: str | None, error: str | None, *, check_leak: bool) -> Candidate:
    """Format and leak checks of one teacher reply; no execution yet."""
    base = Candidate(problem, attempt, revision, reply, None, None, "", "")
    if not ok or reply is None:
        return replace(base, status="api_failure", detail=f"teacher call failed: {error}")
    base = replace(base, style=style_of(reply))
    parsed = strategy.parse(reply)
    if not parsed.ok:
        return replace(base, status="format", detail=f"{parsed.error.kind}: {parsed.error.detail}")
    completion = strategy.render(parsed.steps)
    base = replace(base, completion=completion)
    if check_leak:
        leak = strategy.leaks(completion, problem, family)
        if leak is not None:
            return replace(base, status="leak", detail=leak)
    return base


def followed_over(outcomes: Sequence[Outcome]) -> str:
    """yes when every execution was followed, no when any was not, else unknown."""
    verdicts = [o.followed for o in outcomes]
    if "no" in verdicts:
        return "no"
    return "yes" if verdicts and all(v == "yes" for v in verdicts) else "unknown"


def verdict(candidate: Candidate, outcomes: Sequence[Outcome], budget_usd: float | None = None,
            require_followed: bool = False) -> Candidate:
    """Accept only when every verification execution was correct and, when `budget_usd` is
    given, none cost more than it, and with `require_followed` every one was followed; a wrong
    answer beats a failed call."""
    candidate = replace(candidate, followed=followed_over(outcomes))
    wrong = [o for o in outcomes if o.correct is False]
    if wrong:
        return replace(candidate, status="wrong_answer", detail=wrong[0].reason or "wrong answer")
    failed = [o for o in outcomes if o.correct is None]
    if failed:
        return replace(candidate, status="api_failure", detail=f"core call failed: {failed[0].error}")
    costly = [o for o in outcomes if budget_usd is not None and o.usd > budget_usd]
    if costly:
        return replace(candidate, status="costly",
                       detail=f"USD {costly[0].usd:.6f} with the strategy, above {budget_usd:.6f}")
    if require_followed and candidate.followed != "yes":
        reason = next((o.follow_reason for o in outcomes if o.followed != "yes"), "")
        status = "not_followed" if candidate.followed == "no" else "follow_unknown"
        return replace(candidate, status=status, detail=reason)
    return replace(candidate, status="accepted", detail="")


def cost_budgets(alone: Sequence[Outcome], problems: Sequence[Problem], ratio: float,
                 ) -> dict[str, float]:
    """Problem id -> the most USD a strategy's execution may cost: `ratio` times the core alone.
    Problems whose core-alone call failed get no budget (no cost check)."""
    return {p.id: ratio * o.usd for p, o in zip(problems, alone) if o.correct is not None}


def feedback(candidate: Candidate) -> str:
    """What the teacher is told when asked to revise."""
    if candidate.status == "wrong_answer":
        return f"The core followed your strategy and got it wrong: {candidate.detail}."
    if candidate.status == "costly":
        return ("The core reached the answer, but at more than it costs without a strategy "
                f"({candidate.detail}): it could not follow your steps as written. Use one "
                "simple operation per step on numbers from the problem or earlier results.")
    if candidate.status == "not_followed":
        return (f"The core reached the answer but did not follow your strategy ({candidate.detail}). "
                "Use one simple operation per step on numbers from the problem or earlier results.")
    if candidate.status == "leak":
        return f"Your strategy gives the answer away ({candidate.detail}); describe steps only."
    return f"Your strategy is not in the required format ({candidate.detail})."


def teacher_requests(items: Sequence[tuple[Problem, int, list[dict]]], stage: str) -> list[Request]:
    return [Request(endpoint="teacher", messages=msgs, sample_index=attempt, stage=stage)
            for _, attempt, msgs in items]


def sample_candidates(pool, task, problems: Sequence[Problem], sc: SampleConfig, *,
                      unfiltered: bool, stage: str, core_model: str) -> list[Candidate]:
    """All teacher replies of all proposal chains, each with its final status.

    Round r asks the teacher for every chain still open (proposals in round 0, revisions
    after), checks them, executes the survivors `verify_samples` times on the core, and leaves
    open the chains that failed for a reason a revision can fix.
    """
    family = task.family
    open_items = [(p, k, prompts.teacher_propose_messages(p, family))
                  for p in problems for k in range(sc.proposals)]
    rounds = 1 if unfiltered else sc.revisions + 1
    budgets: dict[str, float] = {}
    if not unfiltered and sc.max_cost_vs_core is not None:
        alone = priced(execute_many(pool, task, [(p, None) for p in problems],
                                    stage=f"{stage}.core_alone"), pool.ledger.prices, core_model)
        budgets = cost_budgets(alone, problems, sc.max_cost_vs_core)
    done: list[Candidate] = []
    for revision in range(rounds):
        if not open_items or pool.stopped:
            break
        results = pool.map(teacher_requests(open_items, f"{stage}.teacher"),
                           desc=f"{stage}: teacher round {revision}")
        judged = [judge_reply(p, family, k, revision, r.ok, r.text, r.error,
                              check_leak=not unfiltered)
                  for (p, k, _), r in zip(open_items, results)]
        if unfiltered:
            done += [c if c.status else replace(c, status="accepted") for c in judged]
            break
        judged = execute_pending(pool, task, judged, sc.verify_samples, f"{stage}.core",
                                 budgets, core_model, sc.require_followed)
        done += judged
        open_items = [(c.problem, c.attempt,
                       prompts.teacher_revise_messages(c.problem, family,
                                                       c.completion or c.reply, feedback(c)))
                      for c in judged if c.status in REVISABLE]
    return done


def execute_pending(pool, task, judged: list[Candidate], verify: int, stage: str,
                    budgets: Mapping[str, float], core_model: str,
                    require_followed: bool = False) -> list[Candidate]:
    """Run the core `verify` times (sample indices 0..verify-1) on each undecided candidate;
    `budgets` (problem id -> USD at list price, replays included) caps one execution's cost."""
    pending = [i for i, c in enumerate(judged) if not c.status]
    items = [(judged[i].problem, judged[i].completion) for i in pending for _ in range(verify)]
    indices = [v for _ in pending for v in range(verify)]
    outcomes = priced(execute_many(pool, task, items, stage=stage, sample_index=indices),
                      pool.ledger.prices, core_model) if items else []
    out = list(judged)
    for j, i in enumerate(pending):
        out[i] = verdict(judged[i], outcomes[j * verify:(j + 1) * verify],
                         budgets.get(judged[i].problem.id), require_followed)
    return out


def accepted_row(c: Candidate, family: str) -> dict:
    return {"id": c.problem.id, "messages": prompts.guide_messages(c.problem, family),
            "completion": c.completion, "style": c.style, "attempt": c.attempt,
            "revision": c.revision, "followed": c.followed}


def rejected_row(c: Candidate, family: str) -> dict:
    row = accepted_row(c, family)
    row["completion"] = c.completion if c.completion is not None else c.reply
    return {**row, "reason": c.status, "detail": c.detail}


def rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n) if n else (0.0, 1.0)
    return {"k": k, "n": n, "rate": k / n if n else 0.0, "ci": [lo, hi]}


def summarize(candidates: Sequence[Candidate], n_problems: int, sc: SampleConfig, *,
              unfiltered: bool) -> dict:
    """Acceptance per proposal chain (after revisions), per reply, per style, per reason."""
    chains = {(c.problem.id, c.attempt) for c in candidates}
    accepted = [c for c in candidates if c.status == "accepted"]
    by_style: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.style is not None:
            by_style.setdefault(c.style, []).append(c)
    return {
        "unfiltered": unfiltered,
        "problems": n_problems,
        "proposals_per_problem": sc.proposals,
        "max_revisions": 0 if unfiltered else sc.revisions,
        "verify_samples": 0 if unfiltered else sc.verify_samples,
        "chains": len(chains),
        "accepted": len(accepted),
        "chain_acceptance": rate(len(accepted), len(chains)),
        "first_try_acceptance": rate(sum(c.revision == 0 for c in accepted),
                                     sum(c.revision == 0 for c in candidates)),
        "reply_acceptance": rate(len(accepted), len(candidates)),
        "problems_with_accepted": len({c.problem.id for c in accepted}),
        "reasons": {r: sum(c.status == r for c in candidates) for r in REASONS},
        "by_style": {s: rate(sum(c.status == "accepted" for c in cs), len(cs))
                     for s, cs in sorted(by_style.items())},
        "require_followed": False if unfiltered else sc.require_followed,
        # unfiltered strategies are never executed, so their follow check is not run
        "accepted_followed": {v: sum(c.followed == v for c in accepted) for v in ("yes", "no", "unknown")},
        "accepted_followed_rate": rate(sum(c.followed == "yes" for c in accepted),
                                       sum(c.followed in ("yes", "no") for c in accepted)),
    }


def fmt_rate(r: Mapping) -> str:
    lo, hi = r["ci"]
    return f"{r['rate']:.1%} [{lo:.1%}, {hi:.1%}] ({r['k']}/{r['n']})"


def report(summary: Mapping) -> str:
    """The printed summary: rates with 95% Wilson intervals, then spend per ledger stage."""
    lines = [f"problems {summary['problems']}, chains {summary['chains']}, "
             f"accepted {summary['accepted']} "
             f"({summary['problems_with_accepted']} problems with at least one)",
             f"acceptance per chain  {fmt_rate(summary['chain_acceptance'])}",
             f"accepted first try    {fmt_rate(summary['first_try_acceptance'])}",
             "rejections  " + ", ".join(f"{k} {v}" for k, v in summary["reasons"].items())]
    followed = summary["accepted_followed"]
    if sum(followed.values()):
        lines.append(f"accepted and followed {fmt_rate(summary['accepted_followed_rate'])}, "
                     f"not followed {followed['no']}, undecided {followed['unknown']}")
    for style, r in summary["by_style"].items():
        lines.append(f"  style {style:<12} {fmt_rate(r)}")
    for stage, t in summary["spend"].items():
        lines.append(f"  {stage:<24} calls {t['calls']} (replayed {t['cached_calls']}), "
                     f"tokens in {t['input_tokens']} out {t['output_tokens']}, "
                     f"USD {t['usd']:.4f} (replayed {t['replayed_usd']:.4f})")
    return "\n".join(lines)


def training_problems(cfg: Config):
    task = tasks.for_run(cfg.task.name, cfg.task.options, cfg.run_dir)
    problems = task.problems("train")
    if cfg.sample.n_problems is not None:
        problems = problems[: cfg.sample.n_problems]
    return task, problems


def run(cfg: Config, unfiltered: bool = False) -> int:
    unfiltered = unfiltered or cfg.sample.unfiltered
    preflight.check(cfg, "sample", unfiltered=unfiltered)
    stage = cfg.sample.out
    out = Path(cfg.run_dir) / stage
    resume.begin_sample(cfg, out)
    task, problems = training_problems(cfg)
    with open_pool(cfg, cfg.run_dir, batch=True) as pool:
        candidates = sample_candidates(pool, task, problems, cfg.sample,
                                       unfiltered=unfiltered, stage=stage,
                                       core_model=cfg.api.core.model)
        totals = pool.ledger.totals()
        pool.raise_if_stopped()  # a partial dataset is never written: rerun to continue
    summary = summarize(candidates, len(problems), cfg.sample, unfiltered=unfiltered)
    summary["spend"] = {k: v for k, v in sorted(totals.items())
                        if k.split(".")[0] == stage}
    write_jsonl_atomic(layout.accepted(cfg.run_dir, stage),
                       (accepted_row(c, task.family) for c in candidates if c.status == "accepted"))
    write_jsonl_atomic(layout.rejected(cfg.run_dir, stage),
                       (rejected_row(c, task.family) for c in candidates
                        if c.status != "accepted"))
    write_json_atomic(layout.sample_summary(cfg.run_dir, stage), summary)
    print(f"exectune sample{' --unfiltered' if unfiltered else ''}: {out}")
    print(report(summary))
    return 0
