"""`sim-judge`: a stand-in for a judge model that decides "followed" from the texts alone.

It reads the judge prompt (problem, strategy, the core's response) the way a careful reader
would: a response that says it sets the strategy aside did not follow it; otherwise the
strategy's steps, read as the core's step language, must each appear as the response's
computation of the same step, in order, on the operands the step names (an arithmetic slip is
still following). It never sees what the core "really" did; the server keeps that apart.

It answers in the fixed form of the follow check: `followed: yes|no` then `reason: ...`.
"""

from __future__ import annotations

import re
from fractions import Fraction

from exectune_jax.data.tasks.answers import numbers_in
from exectune_jax.gcop import prompts
from exectune_jax.gcop.strategy import OPEN, parse
from exectune_jax.gcop.trace import number, read_lines
from exectune_jax.sim.steps import SYMBOLS, Claim, Operation, read_step

_ASIDE = re.compile(r"cannot follow the strategy|my own way|ignore the strategy", re.IGNORECASE)
_COMPUTED = re.compile(r"(-?\d+(?:\.\d+)?) ([-+*/]) (-?\d+(?:\.\d+)?) = (-?\d+(?:\.\d+)?)")
_CLAIMED = re.compile(r"the strategy says the answer is (-?\d+(?:\.\d+)?)", re.IGNORECASE)


def _sentences(strategy: str) -> list[str] | None:
    if OPEN in strategy:
        parsed = parse(strategy)
        return list(parsed.steps) if parsed.ok else None
    lines = (re.sub(r"^\s*[0-9]+[.)]\s+", "", line) for line in strategy.splitlines())
    return [s for line in lines for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s.strip()]


def decide(problem: str, strategy: str, response: str) -> tuple[bool, str]:
    """(followed, reason) from the three texts."""
    if _ASIDE.search(response):
        return False, "the response sets the strategy aside and solves the problem its own way"
    sentences = _sentences(strategy)
    if not sentences:
        return False, "the strategy has no steps the response could carry out"
    known = frozenset(numbers_in(problem))
    steps = [read_step(s, i, known) for i, s in enumerate(sentences)]
    computed = []
    for _, body in read_lines(response):
        m = _COMPUTED.search(body)
        if m is None:
            return False, "a step line of the response computes nothing the strategy asked for"
        computed.append((m.group(2), number(m.group(1)), number(m.group(3)), number(m.group(4))))
    claims = {number(c) for c in _CLAIMED.findall(response)}
    results: dict[int, Fraction] = {}
    lines = iter(computed)
    for i, step in enumerate(steps):
        if isinstance(step, Claim):
            if number(step.answer) not in claims:
                return False, f"the response does not take up the answer step {i + 1} states"
            continue
        if not isinstance(step, Operation):
            return False, f"step {i + 1} is not carried out as one computation"
        line = next(lines, None)
        if line is None:
            return False, f"the response stops before step {i + 1}"
        want = (SYMBOLS[step.op], *(_value(x, results) for x in (step.left, step.right)))
        if line[:3] != want:
            return False, f"step {i + 1} is not what the response computes at that point"
        results[i] = line[3]
    if next(lines, None) is not None:
        return False, "the response computes more than the strategy asks"
    return True, "the response carries out every step of the strategy in order"


def _value(operand, results: dict[int, Fraction]) -> Fraction | None:
    kind, value = operand
    return Fraction(value) if kind == "num" else results.get(value)


class SimJudge:
    name = "sim-judge"

    def complete(self, messages, *, max_tokens: int = 64, temperature: float = 0.0, seed: int = 0) -> str:
        if not prompts.is_judge_follow(messages):
            return "I only judge whether a response followed a strategy."
        response = prompts.response_text(messages)
        strategy = prompts.strategy_text(messages)
        if response is None or strategy is None:
            return "I need a problem, a strategy and a response to judge."
        followed, reason = decide(prompts.problem_text(messages), strategy, response)
        return f"followed: {'yes' if followed else 'no'}\nreason: {reason}"
