"""The step language the simulated teacher writes and the simulated core follows best.

An *atomic* step is one arithmetic operation on known quantities, in one of four shapes:

    Add X to Y.   Subtract X from Y.   Multiply X by Y.   Divide X by Y.

where X and Y are numbers copied from the problem text or "the result of step k" for an
earlier step k. Operands are never computed numbers: a small guide can learn to write these
steps by copying from the problem. How the core reads these and other steps (prose, compound,
vague, verbose) and how likely it is to carry each out is `sim/follow.py`.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from exectune_jax.data.tasks.answers import canonical

SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}


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


def show(value: Fraction) -> str:
    """A number as a solver would write it: integers plain, other values to 4 decimals."""
    if value.denominator == 1:
        return str(value.numerator)
    return canonical(round(Decimal(value.numerator) / Decimal(value.denominator), 4))
