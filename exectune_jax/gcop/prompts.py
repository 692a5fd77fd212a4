"""Every prompt template in one place, per task family, and the inverse readers the simulated
models use to find the problem and the strategy inside a prompt.

The guide prompt is kept short on purpose: the demo guide is a tiny model with a context of a
few hundred tokens, and the instruction is paid on every sampled strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exectune_jax.data.tasks.base import Problem

Messages = list[dict[str, str]]

PROBLEM = "Problem:\n"
STRATEGY = "\n\nStrategy:\n"
PREVIOUS = "\n\nPrevious strategy:\n"
FEEDBACK = "\n\nFeedback:\n"
RESPONSE = "\n\nResponse:\n"

_GUIDE = {
    "math": "Write <strategy> numbered steps </strategy> for a solver: one operation per step, no answer.",
    "code": "Write <strategy> numbered steps </strategy> for a coder: one action per step, no code.",
}
_ADVISOR = {
    "math": "Give a solver brief advice for this problem.",
    "code": "Give a programmer brief advice for this problem.",
}
_CORE_SYSTEM = {
    "math": (
        "Solve the math word problem. When a strategy is given, follow its steps exactly. "
        "Finish with the line: The answer is N."
    ),
    "code": (
        "Write the Python function the problem asks for. When a strategy is given, follow its steps. "
        "Reply with the complete function in one ```python code block."
    ),
}
# With a strategy, a math core also writes one checkable line per step: the trace estimator of
# "followed" reads those lines (gcop/trace.py), at no extra call.
TRACE_LINE = "Write each step of the strategy on its own line as: Step k: <a> <op> <b> = <result>."
_CORE_GUIDED = {"math": f"{_CORE_SYSTEM['math']} {TRACE_LINE}", "code": _CORE_SYSTEM["code"]}
_JUDGE_FOLLOW = (
    "You check whether a solver carried out a strategy. Read the problem, the strategy and the "
    "solver's response. Answer yes when the response performs the strategy's steps, in order, "
    "on the quantities the steps name (an arithmetic slip inside a step still counts as "
    "following it). Answer no when it skips, merges, reorders or replaces steps, or sets the "
    "strategy aside and solves the problem its own way. Reply with exactly two lines:\n"
    "followed: yes or no\nreason: one short sentence"
)
_TEACHER_SYSTEM = {
    "math": (
        "You write strategies that a weaker solver model will follow exactly. Reply with one "
        "<strategy>...</strategy> block of numbered steps. Each step is one arithmetic operation on "
        "numbers copied from the problem or on 'the result of step k', written like 'Multiply 12 by 3.' "
        "or 'Add 5 to the result of step 1.'. Never state the final answer."
    ),
    "code": (
        "You write strategies that a weaker coding model will follow. Reply with one "
        "<strategy>...</strategy> block of short numbered steps, one action each. "
        "Describe what to do; do not write code or the full solution."
    ),
}
_REVISE = "Write a revised strategy the solver can follow exactly."


def _family(family: str) -> str:
    if family not in _GUIDE:
        raise ValueError(f"unknown task family {family!r}; expected one of {sorted(_GUIDE)}")
    return family


def guide_messages(problem: Problem, family: str) -> Messages:
    return [{"role": "user", "content": f"{problem.prompt}\n{_GUIDE[_family(family)]}"}]


def advisor_messages(problem: Problem, family: str) -> Messages:
    return [{"role": "user", "content": f"{problem.prompt}\n{_ADVISOR[_family(family)]}"}]


def core_messages(problem: Problem, family: str, strategy: str | None) -> Messages:
    user = PROBLEM + problem.prompt
    system = _CORE_SYSTEM[_family(family)]
    if strategy is not None and strategy.strip():
        user += STRATEGY + strategy.strip()
        system = _CORE_GUIDED[family]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_follow_messages(problem_text: str, strategy: str, response: str) -> Messages:
    """The follow check's judge prompt: problem, strategy and the core's response."""
    user = f"{PROBLEM}{problem_text}{STRATEGY}{strategy.strip()}{RESPONSE}{response.strip()}"
    return [{"role": "system", "content": _JUDGE_FOLLOW}, {"role": "user", "content": user}]


def is_judge_follow(messages) -> bool:
    return system_text(messages) == _JUDGE_FOLLOW


def teacher_propose_messages(problem: Problem, family: str) -> Messages:
    return [
        {"role": "system", "content": _TEACHER_SYSTEM[_family(family)]},
        {"role": "user", "content": PROBLEM + problem.prompt},
    ]


def teacher_revise_messages(problem: Problem, family: str, strategy: str, feedback: str) -> Messages:
    user = f"{PROBLEM}{problem.prompt}{PREVIOUS}{strategy.strip()}{FEEDBACK}{feedback.strip()}\n\n{_REVISE}"
    return [{"role": "system", "content": _TEACHER_SYSTEM[_family(family)]}, {"role": "user", "content": user}]


# ---------------------------------------------------------------- readers (used by the simulator)


def _contents(messages: Sequence[Mapping[str, str]] | Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    out = []
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else (m[0], m[1])
        out.append((str(role), str(content)))
    return out


def last_user(messages) -> str:
    users = [c for r, c in _contents(messages) if r == "user"]
    return users[-1] if users else ""


def system_text(messages) -> str:
    return "\n".join(c for r, c in _contents(messages) if r == "system")


def problem_text(messages) -> str:
    """The problem inside a core or teacher prompt (the whole user turn if it is not ours)."""
    user = last_user(messages)
    if not user.startswith(PROBLEM):
        return user
    body = user[len(PROBLEM):]
    cuts = [i for i in (body.find(STRATEGY), body.find(PREVIOUS)) if i >= 0]
    return body[: min(cuts)] if cuts else body


def strategy_text(messages) -> str | None:
    """The strategy (or free-form advice) given to the core, or None."""
    user = last_user(messages)
    if not user.startswith(PROBLEM) or STRATEGY not in user:
        return None
    body = user[user.index(STRATEGY) + len(STRATEGY):]
    return body[: body.find(RESPONSE)] if RESPONSE in body else body


def response_text(messages) -> str | None:
    """The core response inside a judge prompt, or None."""
    user = last_user(messages)
    start = user.find(RESPONSE, max(user.find(STRATEGY), 0))
    return None if start < 0 else user[start + len(RESPONSE):]


def previous_strategy(messages) -> str | None:
    """The strategy a revise prompt asks the teacher to improve, or None for a fresh proposal."""
    user = last_user(messages)
    if PREVIOUS not in user:
        return None
    body = user[user.index(PREVIOUS) + len(PREVIOUS):]
    return body[: body.rfind(FEEDBACK)] if FEEDBACK in body else body


def family_of(messages) -> str:
    """Which family's system prompt a core or teacher prompt carries ("math" by default)."""
    system = system_text(messages)
    return "code" if system in (_CORE_SYSTEM["code"], _TEACHER_SYSTEM["code"]) else "math"
