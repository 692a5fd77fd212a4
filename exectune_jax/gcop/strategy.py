"""The strategy format: exactly one `<strategy>...</strategy>` block of numbered steps.

This is the format gate of the RL reward and the filter of acceptance sampling, so parsing is
strict and every failure is a named `StrategyError` kind rather than a silent zero. Text
outside the block (a preamble, a trailing note) is allowed and ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from exectune_jax.data.tasks.answers import numbers_in, same_number
from exectune_jax.data.tasks.base import Problem

OPEN, CLOSE = "<strategy>", "</strategy>"
_NUMBERED = re.compile(r"([0-9]+)[.)]\s+(\S.*)")


@dataclass(frozen=True)
class StrategyError:
    kind: str  # missing_tag | duplicate_tag | unclosed_tag | empty | not_numbered | too_many_steps | too_long
    detail: str


@dataclass(frozen=True)
class Parsed:
    steps: tuple[str, ...] | None
    error: StrategyError | None

    @property
    def ok(self) -> bool:
        return self.error is None


def render(steps: Sequence[str]) -> str:
    """The canonical block for `steps`; each step must be one stripped, non-empty line."""
    for i, step in enumerate(steps, start=1):
        if not isinstance(step, str) or not step.strip() or step != step.strip() or step.splitlines() != [step]:
            raise ValueError(f"step {i} must be one non-empty line without surrounding spaces: {step!r}")
        if OPEN in step or CLOSE in step:
            raise ValueError(f"step {i} must not contain a strategy tag")
    lines = [f"{i}. {step}" for i, step in enumerate(steps, start=1)]
    return "\n".join([OPEN, *lines, CLOSE])


def _fail(kind: str, detail: str) -> Parsed:
    return Parsed(None, StrategyError(kind, detail))


def parse(text: str, *, max_steps: int = 12, max_words: int = 200) -> Parsed:
    """Steps of the single strategy block in `text`, or the first rule it breaks."""
    opens, closes = text.count(OPEN), text.count(CLOSE)
    if opens == 0:
        return _fail("missing_tag", f"no {OPEN} block; write the steps inside {OPEN}...{CLOSE}")
    if opens > 1 or closes > 1:
        return _fail("duplicate_tag", f"{opens} opening and {closes} closing tags; write exactly one block")
    start = text.index(OPEN) + len(OPEN)
    if closes == 0 or text.index(CLOSE) < start:
        return _fail("unclosed_tag", f"{OPEN} is not followed by {CLOSE}")
    lines = [line.strip() for line in text[start:text.index(CLOSE)].splitlines() if line.strip()]
    if not lines:
        return _fail("empty", "the strategy block has no steps")
    steps = []
    for i, line in enumerate(lines, start=1):
        m = _NUMBERED.fullmatch(line)
        if m is None or int(m.group(1)) != i:
            return _fail("not_numbered", f"line {i} must start with '{i}.': {line[:60]!r}")
        steps.append(m.group(2).strip())
    if len(steps) > max_steps:
        return _fail("too_many_steps", f"{len(steps)} steps > {max_steps}")
    words = sum(len(s.split()) for s in steps)
    if words > max_words:
        return _fail("too_long", f"{words} words > {max_words}")
    return Parsed(tuple(steps), None)


# ---------------------------------------------------------------- leaks

_STEP_REFS = re.compile(r"(?im)^\s*[0-9]+[.)]|\bsteps?\s+[0-9]+(?:\s*(?:and|,|-|to)\s*[0-9]+)*")
_CLAIM = re.compile(r"answer\s+(?:is|=|:|should be|will be)\s*\$?\s*(-?[\d,]+(?:\.\d+)?)", re.IGNORECASE)
_DEF = re.compile(r"\bdef\s+\w+\s*\([^)]*\)\s*(?:->[^:\n]*)?:")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_NGRAM = 4
_OVERLAP = 0.5


def leaks(strategy_text: str, problem: Problem, family: str) -> str | None:
    """Why the strategy gives the solution away, or None.

    math: the gold answer appears as a number that is not already in the problem (step
    numbers and "step k" references do not count), or is claimed outright.
    code: a fenced code block, a function definition, or most of the reference solution's
    token 4-grams.
    """
    if family == "math":
        return _math_leak(strategy_text, problem)
    if family == "code":
        return _code_leak(strategy_text, problem)
    return None


def _math_leak(text: str, problem: Problem) -> str | None:
    gold = problem.answer
    for claimed in _CLAIM.findall(text):
        if same_number(claimed, gold):
            return f"states the final answer {gold}"
    if any(same_number(n, gold) for n in numbers_in(problem.prompt)):
        return None
    if any(same_number(n, gold) for n in numbers_in(_STEP_REFS.sub(" ", text))):
        return f"contains the final answer {gold}"
    return None


def _code_leak(text: str, problem: Problem) -> str | None:
    if "```" in text:
        return "contains a code block"
    if _DEF.search(text):
        return "contains a function definition"
    solution = str(problem.meta.get("solution") or "")
    reference = _ngrams(solution)
    if len(reference) >= 5:
        shared = len(reference & _ngrams(text)) / len(reference)
        if shared >= _OVERLAP:
            return f"repeats {shared:.0%} of the reference solution"
    return None


def _ngrams(code: str) -> set[tuple[str, ...]]:
    tokens = _TOKEN.findall(code)
    return {tuple(tokens[i:i + _NGRAM]) for i in range(len(tokens) - _NGRAM + 1)}
