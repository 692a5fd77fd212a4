"""The trace estimator of "followed": no extra call, for math strategies.

Given a strategy, the math core is asked to write one line per step, `Step k: <a> <op> <b> =
<result>` (prompts.TRACE_LINE). This checker compares those lines with the strategy: as many
lines as the strategy has computing steps, labelled 1..n in order, each carrying the operation
its step names on the operands it names (a number from the step, or the result the response
itself reported for an earlier step). A line with reasoning of its own around the computation is
the core solving the problem its way, not following. An arithmetic slip inside a line still
counts as following the step.

A real core writes its step lines its own way (SmolLM2-135M behind llama.cpp, recorded in
tests/data/real_core_replies.jsonl): numbered `1.` or `1)` instead of `Step 1:`, and often the
step's own words before its work: `2. Add 29 to the result of step 1: 96 + 29 = 125`, or
`1. Multiply 27 by 4, which is 108.`. A step line is therefore read as a bare computation, a
restatement (a phrase starting with the step's verb) followed by a computation, whose operands
are then what is checked, or a restatement followed by a result alone, which counts only when
the restated step is the strategy's step as written. A few unit words after the last number are
allowed (`= 50 pencils`).

It decides only what the texts settle: a strategy that is not a numbered `<strategy>` block, a
response with no step lines, a step line that restates its step with no result on that line,
or a strategy step that is not one machine-checkable operation (compound, vague) with every
other check passing gives `unknown` with the reason.

The step reader here is the checker's own, not the simulator's: an estimator that must work on
real cores cannot lean on how the simulated one reads a strategy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from exectune_jax.gcop.strategy import parse

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
_OPERAND = rf"({_NUM}|the result of step \d+)"
_SHAPES = (
    ("+", re.compile(rf"add {_OPERAND} to {_OPERAND}", re.IGNORECASE), True),
    ("-", re.compile(rf"subtract {_OPERAND} from {_OPERAND}", re.IGNORECASE), True),
    ("*", re.compile(rf"multiply {_OPERAND} by {_OPERAND}", re.IGNORECASE), False),
    ("/", re.compile(rf"divide {_OPERAND} by {_OPERAND}", re.IGNORECASE), False),
)
_CLAIM = re.compile(rf"(?:so )?the (?:final )?answer is {_NUM}", re.IGNORECASE)
# `Step k:` (also `k.`, `k)`, markdown-bold `**Step k:**`); a bare number label needs `.` not
# followed by a digit, or `)`, so a line opening with a decimal or a computation is not a label.
_LINE = re.compile(r"^\s*[*_#]*\s*(?:step\s+(\d+)\s*[:.)-]|(\d+)(?:\.(?!\d)|\)))[*_]*\s*(.*?)\s*$",
                   re.IGNORECASE)
_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "x": "*", "/": "/", "÷": "/"}
_UNITS = r"(?:\s+[A-Za-z]+){0,3}"  # "= 50 pencils", "gives 24 cookies"
_COMPUTATION = re.compile(
    rf"({_NUM})\s*([-+*/×÷x−])\s*({_NUM})\s*[=≈]\s*({_NUM})(?:\.\.\.)?{_UNITS}\.?")
_RESULT = re.compile(rf"({_NUM}){_UNITS}[.:]?")
# A restatement: the step's verb, then no punctuation that would start reasoning of its own.
_RESTATED = re.compile(
    r"((?:add|subtract|multiply|divide)\b[^,:;=()]*?)\s*"
    r"(?::|,?\s+to\s+get|,\s*which\s+(?:gives|is|equals|results\s+in)(?:\s+you)?|,?\s+(?:gives|equals)(?:\s+you)?)"
    r"\s*(.*)", re.IGNORECASE)


@dataclass(frozen=True)
class Op:
    """A checkable step: `op` on (left, right); an operand is a number or ("step", k0)."""

    op: str
    left: Fraction | tuple[str, int]
    right: Fraction | tuple[str, int]


@dataclass(frozen=True)
class Line:
    label: int
    op: str
    a: Fraction
    b: Fraction
    result: Fraction


def number(text: str) -> Fraction:
    return Fraction(text.replace("$", "").replace(",", ""))


def _operand(text: str) -> Fraction | tuple[str, int]:
    if text.lower().startswith("the result of step"):
        return ("step", int(text.split()[-1]) - 1)
    return number(text)


def read_step(text: str) -> Op | str | None:
    """A strategy step as the checker reads it: an Op, "claim" (states an answer), or None
    when it is not one machine-checkable operation."""
    body = text.strip().rstrip(".").strip()
    if _CLAIM.fullmatch(body):
        return "claim"
    for op, shape, reversed_ in _SHAPES:
        m = shape.fullmatch(body)
        if m:
            first, second = (_operand(g) for g in m.groups())
            # "Add X to Y" and "Subtract X from Y" name the right operand first.
            return Op(op, second, first) if reversed_ else Op(op, first, second)
    return None


def read_lines(response: str) -> list[tuple[int, str]]:
    """(label, body) of every step line of a response (`Step k:`, `k.`, `k)`), in order."""
    return [(int(m.group(1) or m.group(2)), m.group(3)) for line in response.splitlines()
            if (m := _LINE.match(line))]


def computation(body: str) -> Line | None:
    """The line body as a bare computation `a op b = r`, or None when it says anything more."""
    m = _COMPUTATION.fullmatch(body.strip())
    if m is None:
        return None
    return Line(0, _OPS[m.group(2)], number(m.group(1)), number(m.group(3)), number(m.group(4)))


@dataclass(frozen=True)
class Stated:
    """A step line that restates a step and gives its result alone (`Multiply 4 by 8, which is
    32.`); `result` is None when the line gives nothing after the restatement."""

    step: Op
    result: Fraction | None


def read_body(body: str) -> Line | Stated | None:
    """What a step line's body shows: a computation (bare or after a restatement), a restated
    step with its result alone, or None (reasoning of its own)."""
    text = body.strip()
    if (line := computation(text)) is not None:
        return line
    whole = read_step(text.rstrip(":").strip())
    if isinstance(whole, Op):
        return Stated(whole, None)
    m = _RESTATED.fullmatch(text)
    if m is None:
        return None
    rest = m.group(2).strip()
    if (line := computation(rest)) is not None:
        return line
    step, result = read_step(m.group(1)), _RESULT.fullmatch(rest)
    if isinstance(step, Op) and result is not None:
        return Stated(step, number(result.group(1)))
    return None


def check(strategy_text: str, response: str) -> tuple[str, str]:
    """(verdict, reason): verdict is "yes", "no" or "unknown"."""
    parsed = parse(strategy_text)
    if not parsed.ok:
        return "unknown", "the strategy is not a numbered <strategy> block"
    steps = [read_step(s) for s in parsed.steps]
    computing = [i for i, s in enumerate(steps) if s != "claim"]
    lines = read_lines(response)
    if not lines:
        return "unknown", "the response has no step lines to check"
    read: list[tuple[int, Line | Stated]] = []
    for label, body in lines:
        shown = read_body(body)
        if shown is None:
            return "no", f"step line {label} carries reasoning of its own, not the step's computation"
        read.append((label, shown))
    if len(read) != len(computing):
        return "no", f"{len(read)} step lines for {len(computing)} strategy steps"
    if [label for label, _ in read] != list(range(1, len(read) + 1)):
        return "no", "the step lines are not numbered 1..n in order"
    results: dict[int, Fraction] = {}  # strategy step index -> the result the response reported
    uncheckable, unshown = [], []
    for (label, shown), i in zip(read, computing):
        step = steps[i]
        if isinstance(shown, Stated):
            # a result alone counts only for the step restated as written
            if step is not None and shown.step != step:
                return "no", f"step {i + 1} is restated as another operation (line {label})"
            if shown.result is None:
                unshown.append(label)
                continue
            results[i] = shown.result
            if step is None:
                uncheckable.append(i + 1)
            continue
        results[i] = shown.result
        if step is None:
            uncheckable.append(i + 1)
            continue
        want = [_value(x, results) for x in (step.left, step.right)]
        if None in want:  # it uses the result of a line that showed none
            unshown.append(label)
            continue
        if step.op != shown.op or want != [shown.a, shown.b]:
            return "no", f"step {i + 1} is not carried out as written (line {label})"
    if unshown:
        return "unknown", f"step line {unshown[0]} restates its step with no result on the line"
    if uncheckable:
        return "unknown", f"step {uncheckable[0]} is not one checkable operation"
    return "yes", "every step line carries out its step, in order"


def _value(operand: Fraction | tuple[str, int], results: dict[int, Fraction]) -> Fraction | None:
    if isinstance(operand, tuple):
        return results.get(operand[1])
    return operand
