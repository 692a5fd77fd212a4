"""The trace estimator of "followed": no extra call, for math strategies.

Given a strategy, the math core is asked to write one line per step, `Step k: <a> <op> <b> =
<result>` (prompts.TRACE_LINE). This checker compares those lines with the strategy: as many
lines as the strategy has computing steps, labelled 1..n in order, each carrying the operation
its step names on the operands it names (a number from the step, or the result the response
itself reported for an earlier step). A line with reasoning of its own around the computation is
the core solving the problem its way, not following. An arithmetic slip inside a line still
counts as following the step.

It decides only what the texts settle: a strategy that is not a numbered `<strategy>` block, a
response with no step lines, or a strategy step that is not one machine-checkable operation
(compound, vague) with every other check passing gives `unknown` with the reason.

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
_LINE = re.compile(r"^\s*step\s+(\d+)\s*[:.)-]\s*(.*?)\s*$", re.IGNORECASE)
_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "x": "*", "/": "/", "÷": "/"}
_COMPUTATION = re.compile(rf"({_NUM})\s*([-+*/×÷x−])\s*({_NUM})\s*=\s*({_NUM})\.?")


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
    """(label, body) of every `Step k:` line of a response, in order."""
    return [(int(m.group(1)), m.group(2)) for line in response.splitlines()
            if (m := _LINE.match(line))]


def computation(body: str) -> Line | None:
    """The line body as a bare computation `a op b = r`, or None when it says anything more."""
    m = _COMPUTATION.fullmatch(body.strip())
    if m is None:
        return None
    return Line(0, _OPS[m.group(2)], number(m.group(1)), number(m.group(3)), number(m.group(4)))


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
    read = []
    for label, body in lines:
        line = computation(body)
        if line is None:
            return "no", f"step line {label} carries reasoning of its own, not the step's computation"
        read.append(Line(label, line.op, line.a, line.b, line.result))
    if len(read) != len(computing):
        return "no", f"{len(read)} step lines for {len(computing)} strategy steps"
    if [line.label for line in read] != list(range(1, len(read) + 1)):
        return "no", "the step lines are not numbered 1..n in order"
    results: dict[int, Fraction] = {}  # strategy step index -> the result the response reported
    uncheckable = []
    for line, i in zip(read, computing):
        step = steps[i]
        results[i] = line.result
        if step is None:
            uncheckable.append(i + 1)
            continue
        want = [_value(x, results) for x in (step.left, step.right)]
        if step.op != line.op or want != [line.a, line.b]:
            return "no", f"step {i + 1} is not carried out as written (line {line.label})"
    if uncheckable:
        return "unknown", f"step {uncheckable[0]} is not one checkable operation"
    return "yes", "every step line carries out its step, in order"


def _value(operand: Fraction | tuple[str, int], results: dict[int, Fraction]) -> Fraction | None:
    if isinstance(operand, tuple):
        return results.get(operand[1])
    return operand
