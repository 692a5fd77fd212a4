"""Which of a problem's operations a strategy or advice names correctly, read as the core reads it.

A step or sentence names operation j of the problem's program correctly when one of its phrases
(`sim/follow.py`'s reading) is the same operation on the same operands. A written number names an
operand whose value it is: a problem number, or an intermediate amount written out. A reference
("the result of step k", "the amount so far", "that", "the total") names any operand that is an
earlier result: the core reading it as a hint does not need to resolve which. Operand order counts
for subtract and divide only.

The core's own reasoning is spared part of such an operation's difficulty even where it did not
carry the step out (`WorldSpec.named_op_value`, `sim/core.py`).
"""

from __future__ import annotations

from fractions import Fraction

from exectune_jax.data.tasks.arith import Program, operand_value, run_program
from exectune_jax.sim import follow

_COMMUTATIVE = ("add", "multiply")


def named_correctly(text: str, program: Program) -> frozenset[int]:
    """Indices of the program's operations that some phrase of `text` names correctly."""
    steps, _, _ = follow.sentences_of(text)
    if steps is None:
        return frozenset()
    results = run_program(program)
    found = set()
    for sentence in steps:
        for p in follow.phrases(sentence.strip().rstrip(".").strip()):
            # "Add X to Y" and "Subtract X from Y" name the right operand first.
            written = (p.second, p.first) if p.op in ("add", "subtract") else (p.first, p.second)
            found |= {j for j, (op, left, right) in enumerate(program.ops)
                      if op == p.op and _same(written, (left, right), op, program, results)}
    return frozenset(found)


def _same(written: tuple[str, str], refs: tuple[str, str], op: str, program: Program,
          results: list[Fraction]) -> bool:
    orders = (refs, refs[::-1]) if op in _COMMUTATIVE else (refs,)
    return any(all(_names(w, r, program, results) for w, r in zip(written, order)) for order in orders)


def _names(written: str, ref: str, program: Program, results: list[Fraction]) -> bool:
    text = written.lstrip("$")
    if text.isdigit():
        return Fraction(int(text)) == operand_value(ref, program.quantities, results)
    return ref.startswith("r")
