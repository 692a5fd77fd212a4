"""The step language the simulated core can follow, and how the simulated teacher writes it.

An *atomic* step is one arithmetic operation on known quantities, in one of four shapes:

    Add X to Y.   Subtract X from Y.   Multiply X by Y.   Divide X by Y.

where X and Y are numbers copied from the problem text or "the result of step k" for an
earlier step k. Operands are never computed numbers: a small guide can learn to write these
steps by copying from the problem. A step may also claim the answer ("The answer is N."),
which the core takes at face value; that is what makes leaking pay off unless penalised.
Anything else (two operations, vague references, over `MAX_STEP_WORDS`) cannot be followed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from exectune_jax.data.tasks.answers import canonical
from exectune_jax.data.tasks.arith import apply_op

MAX_STEP_WORDS = 14
_OPERAND = r"(\$?\d+|the result of step \d+)"
_SHAPES = {
    "add": re.compile(rf"add {_OPERAND} to {_OPERAND}", re.IGNORECASE),
    "subtract": re.compile(rf"subtract {_OPERAND} from {_OPERAND}", re.IGNORECASE),
    "multiply": re.compile(rf"multiply {_OPERAND} by {_OPERAND}", re.IGNORECASE),
    "divide": re.compile(rf"divide {_OPERAND} by {_OPERAND}", re.IGNORECASE),
}
_CLAIM = re.compile(r"(?:so )?the (?:final )?answer is \$?(-?\d+(?:\.\d+)?)", re.IGNORECASE)
SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}


@dataclass(frozen=True)
class Operation:
    """A followable step: `op` applied to (left, right); operands are ("num", value) or ("step", k0)."""

    op: str
    left: tuple[str, Fraction | int]
    right: tuple[str, Fraction | int]


@dataclass(frozen=True)
class Claim:
    answer: str


@dataclass(frozen=True)
class Unfollowable:
    reason: str


Step = Operation | Claim | Unfollowable


def render_operand(ref: str, quantities: tuple[int, ...] | list[int]) -> str:
    """"q3" -> the 4th problem number; "r1" -> "the result of step 2"."""
    index = int(ref[1:])
    return str(quantities[index]) if ref[0] == "q" else f"the result of step {index + 1}"


def render_step(op: str, left: str, right: str) -> str:
    """One atomic step sentence; `left`/`right` are already rendered operands."""
    if op == "add":
        return f"Add {right} to {left}."
    if op == "subtract":
        return f"Subtract {right} from {left}."
    if op == "multiply":
        return f"Multiply {left} by {right}."
    if op == "divide":
        return f"Divide {left} by {right}."
    raise ValueError(f"unknown op {op!r}")


def read_step(text: str, index: int, known: frozenset[str]) -> Step:
    """How the core reads step number `index` (0-based) given the numbers in the problem."""
    body = text.strip().rstrip(".").strip()
    if len(body.split()) > MAX_STEP_WORDS:
        return Unfollowable(f"step {index + 1} is too long")
    claim = _CLAIM.fullmatch(body)
    if claim:
        return Claim(canonical(Decimal(claim.group(1))))
    for op, shape in _SHAPES.items():
        m = shape.fullmatch(body)
        if m:
            first, second = (_operand(g, index, known) for g in m.groups())
            if first is None or second is None:
                return Unfollowable(f"step {index + 1} uses a quantity that is not in the problem or an earlier step")
            # "Add X to Y" and "Subtract X from Y" name the right operand first.
            left, right = (second, first) if op in ("add", "subtract") else (first, second)
            return Operation(op, left, right)
    return Unfollowable(f"step {index + 1} is not one operation")


def _operand(text: str, index: int, known: frozenset[str]) -> tuple[str, Fraction | int] | None:
    if text.lower().startswith("the result of step"):
        k = int(text.split()[-1]) - 1
        return ("step", k) if 0 <= k < index else None
    number = text.lstrip("$")
    return ("num", Fraction(int(number))) if number in known else None


def follow(steps: list[Step], slips: dict[int, Fraction] | None = None,
           ) -> tuple[list[tuple[Operation, Fraction, Fraction, Fraction]], str | None]:
    """Execute followable steps: ([(step, a, b, result)], claimed answer or None).

    `slips` maps a step index to an arithmetic slip added to that step's result (a careless
    core). Raises ZeroDivisionError or ValueError when a step divides by zero or refers to a
    claim, which the caller treats as an unfollowable strategy.
    """
    slips = slips or {}
    done: list[tuple[Operation, Fraction, Fraction, Fraction]] = []
    results: dict[int, Fraction] = {}
    claim = None
    for i, step in enumerate(steps):
        if isinstance(step, Claim):
            claim = step.answer
            continue
        if not isinstance(step, Operation):
            raise ValueError("unfollowable step")
        a, b = (_value(x, results) for x in (step.left, step.right))
        r = apply_op(step.op, a, b) + slips.get(i, 0)
        results[i] = r
        done.append((step, a, b, r))
    return done, claim


def _value(operand: tuple[str, Fraction | int], results: dict[int, Fraction]) -> Fraction:
    kind, value = operand
    if kind == "num":
        return Fraction(value)
    if value not in results:
        raise ValueError("reference to a step without a result")
    return results[value]


def show(value: Fraction) -> str:
    """A number as a solver would write it: integers plain, other values to 4 decimals."""
    if value.denominator == 1:
        return str(value.numerator)
    return canonical(round(Decimal(value.numerator) / Decimal(value.denominator), 4))
