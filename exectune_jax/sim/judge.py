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

from exectune_jax.gcop import prompts
from exectune_jax.gcop.trace import number, read_lines
from exectune_jax.sim import follow
from exectune_jax.sim.steps import SYMBOLS

_ASIDE = re.compile(r"cannot follow the strategy|cannot carry out|my own way|ignore the strategy",
                    re.IGNORECASE)
_COMPUTED = re.compile(r"(-?\d+(?:\.\d+)?) ([-+*/]) (-?\d+(?:\.\d+)?) = (-?\d+(?:\.\d+)?)")
_CLAIMED = re.compile(r"the strategy says the answer is (-?\d+(?:\.\d+)?)", re.IGNORECASE)


def decide(problem: str, strategy: str, response: str) -> tuple[bool, str]:
    """(followed, reason) from the three texts.

    Each operation the strategy names (one per atomic step, two in a chained step, one named
    inside a prose sentence) must be the response's next computation: the same operation, on
    the problem's numbers the step names, or on results the response computed before where the
    step refers to one. A stated answer must be taken up; prose that names no operation is
    commentary."""
    if _ASIDE.search(response):
        return False, "the response sets the strategy aside and solves the problem its own way"
    sentences, block, why = follow.sentences_of(strategy)
    if sentences is None:
        return False, f"the strategy has no steps the response could carry out ({why})"
    computed = []
    for _, body in read_lines(response):
        m = _COMPUTED.search(body)
        if m is None:
            return False, "a step line of the response computes nothing the strategy asked for"
        computed.append((m.group(2), number(m.group(1)), number(m.group(3)), number(m.group(4))))
    claims = {number(c) for c in _CLAIMED.findall(response)}
    results: list[Fraction] = []
    lines = iter(computed)
    for i, sentence in enumerate(sentences):
        body = sentence.strip().rstrip(".").strip()
        stated = follow.claim_of(body)
        if stated is not None:
            if number(stated) not in claims:
                return False, f"the response does not take up the answer step {i + 1} states"
            continue
        found = follow.phrases(body)
        if not found:
            if block:
                return False, f"step {i + 1} names no computation the response could carry out"
            continue
        for phrase in found:
            line = next(lines, None)
            if line is None:
                return False, f"the response stops before step {i + 1}"
            op, a, b, result = line
            # "Add X to Y" and "Subtract X from Y" name the right operand first.
            first, second = ((phrase.second, phrase.first) if phrase.op in ("add", "subtract")
                             else (phrase.first, phrase.second))
            if op != SYMBOLS[phrase.op] or not (_names(first, a, results) and _names(second, b, results)):
                return False, f"step {i + 1} is not what the response computes at that point"
            results.append(result)
    if next(lines, None) is not None:
        return False, "the response computes more than the strategy asks"
    return True, "the response carries out every step of the strategy in order"


def _names(operand: str, value: Fraction, earlier: list[Fraction]) -> bool:
    """Whether `value` is what the step's operand names: its number, or an earlier result."""
    text = operand.lstrip("$")
    return Fraction(int(text)) == value if text.isdigit() else value in earlier


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
