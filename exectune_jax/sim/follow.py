"""How the simulated core reads a strategy and how far it carries it out (graded following).

Reading. Each step of a `<strategy>` block, or each sentence of free-form advice, names up to
two operations (add, subtract, multiply, divide; "Add 26 to 12" or, in prose, "adding 26 to
the amount so far") on operands: a number in the problem, "the result of step k", "the amount
so far" (the latest result), "that"/"it" after "then" (the result just computed) or a vague
reference ("the total", "the previous result", "an earlier amount": the latest result not
already used in the step). A step is one of these kinds, each with a follow probability that
is a `WorldSpec` field:

    atomic    exactly one operation in the step language       follow_atomic   (~1)
    prose     one operation named inside a sentence            follow_prose
    compound  two chained operations                           follow_compound
    verbose   more than `max_step_words` words                 follow_verbose
    vague     an operand is a vague reference                  follow_vague

A step of several kinds gets the lowest of their probabilities. A step cannot be carried out
at all (probability 0) when it uses a number that is not in the problem, refers to a step not
yet done (out of order) or without a result, divides by zero, names three or more operations,
or, in a strategy block, names no operation. In free-form advice a sentence naming no
operation is commentary and is skipped. "The answer is N" is a claim, taken at face value.

The rule. The core carries the steps out in order. Step i is carried out when a stable hash of
(core, problem, strategy, i, sample index) falls under its probability (`core.follow_draw`), so a
replay makes the same decisions and another sample of the same strategy draws anew: e(x, s) is
a probability over the core's samples, not a verdict fixed per strategy.
At the first step it does not carry out it stops following and reasons on its own from there
(`sim/core.py`): what it computed so far stays. `Execution.followed_all` is the ground truth
"the core followed the whole strategy".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from exectune_jax.data.tasks.answers import canonical
from exectune_jax.data.tasks.arith import apply_op
from exectune_jax.gcop.strategy import OPEN, parse
from exectune_jax.world import WorldSpec

_VAGUE = ("the previous result", "the running total", "an earlier amount", "this amount", "the total",
          "the amount", "that", "it")
_OPERAND = (r"(\$?\d+|the result of step \d+|the amount so far|"
            + "|".join(re.escape(v) for v in _VAGUE) + r")(?!\w)")
_OPS = {
    "add": re.compile(rf"\badd(?:ing)? {_OPERAND} to {_OPERAND}", re.IGNORECASE),
    "subtract": re.compile(rf"\bsubtract(?:ing)? {_OPERAND} from {_OPERAND}", re.IGNORECASE),
    "multiply": re.compile(rf"\bmultiply(?:ing)? {_OPERAND} by {_OPERAND}", re.IGNORECASE),
    "divide": re.compile(rf"\bdivid(?:e|ing) {_OPERAND} by {_OPERAND}", re.IGNORECASE),
}
_CLAIM = re.compile(r"(?:so )?the (?:final )?answer is \$?(-?\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass(frozen=True)
class Done:
    """One operation the core carried out: step index (0-based), op, operands and result."""

    step: int
    op: str
    a: Fraction
    b: Fraction
    result: Fraction


@dataclass(frozen=True)
class Execution:
    done: tuple[Done, ...]
    claim: str | None
    stopped: int | None  # the step the core did not carry out; None: it followed every step
    reason: str  # why it stopped ("" when it did not)

    @property
    def followed_all(self) -> bool:
        return self.stopped is None


@dataclass(frozen=True)
class _Phrase:
    op: str
    first: str  # operands as written, in the phrase's order
    second: str
    start: int
    end: int


def sentences_of(text: str) -> tuple[list[str] | None, bool, str]:
    """(steps or sentences, whether it is a strategy block, why not readable)."""
    if OPEN in text:
        parsed = parse(text)
        if not parsed.ok:
            return None, True, f"it is not well formed: {parsed.error.kind}"
        out = list(parsed.steps)
        block = True
    else:
        lines = (re.sub(r"^\s*[0-9]+[.)]\s+", "", line) for line in text.splitlines())
        out = [s for line in lines for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s.strip()]
        block = False
    return (out, block, "") if out else (None, block, "it is empty")


def claim_of(body: str) -> str | None:
    """The answer a sentence states ("The answer is N"), canonical; None when it states none."""
    m = _CLAIM.fullmatch(body)
    return canonical(Decimal(m.group(1))) if m else None


def phrases(text: str) -> list[_Phrase]:
    """The operations a sentence names, in order of appearance."""
    found = [_Phrase(op, m.group(1), m.group(2), m.start(), m.end())
             for op, pattern in _OPS.items() for m in pattern.finditer(text)]
    return sorted(found, key=lambda p: p.start)


def kinds(text: str, found: list[_Phrase], world: WorldSpec) -> set[str]:
    """The kinds of a step that names one or two operations (see the module docstring)."""
    body = text.strip().rstrip(".").strip()
    out = set()
    if len(found) == 2:
        out.add("compound")
    elif found[0].start == 0 and found[0].end == len(body):
        out.add("atomic")
    else:
        out.add("prose")
    if len(body.split()) > world.max_step_words:
        out.add("verbose")
    chained = {found[1].first.lower(), found[1].second.lower()} & {"that", "it"} if len(found) == 2 else set()
    for k, p in enumerate(found):
        for operand in (p.first.lower(), p.second.lower()):
            if operand in _VAGUE and not (k == 1 and operand in chained):
                out.add("vague")
    return out


def probability(step_kinds: set[str], world: WorldSpec) -> float:
    return min(getattr(world, f"follow_{k}") for k in step_kinds)


def execute(text: str, known: frozenset[str], world: WorldSpec, carried_out: Callable[[int, float], bool],
            slip: Callable[[], Fraction]) -> Execution:
    """Carry out `text` step by step; `carried_out(i, p)` decides step i of probability p and
    `slip()` is the arithmetic slip (usually 0) added to each result."""
    steps, block, why = sentences_of(text)
    if steps is None:
        return Execution((), None, 0, why)
    done: list[Done] = []
    step_results: dict[int, Fraction] = {}
    claim = None

    def stop(i: int, reason: str) -> Execution:
        return Execution(tuple(done), claim, i, reason)

    for i, sentence in enumerate(steps):
        body = sentence.strip().rstrip(".").strip()
        stated = claim_of(body)
        if stated is not None:
            claim = stated
            continue
        found = phrases(body)
        if not found:
            if block:
                return stop(i, f"step {i + 1} is not an operation")
            continue
        if len(found) > 2:
            return stop(i, f"step {i + 1} has more than two operations")
        if not carried_out(i, probability(kinds(body, found, world), world)):
            return stop(i, f"step {i + 1} is not one it can carry out")
        results_before = len(done)
        for k, p in enumerate(found):
            values: list[Fraction] = []
            for operand in (p.first, p.second):
                value = resolve_operand(operand, i, k, known, step_results, done, values)
                if value is None:
                    del done[results_before:]
                    return stop(i, f"step {i + 1} uses a quantity that is not in the problem or an earlier step")
                values.append(value)
            # "Add X to Y" and "Subtract X from Y" name the right operand first.
            a, b = (values[1], values[0]) if p.op in ("add", "subtract") else (values[0], values[1])
            try:
                r = apply_op(p.op, a, b) + slip()
            except ZeroDivisionError:
                del done[results_before:]
                return stop(i, f"step {i + 1} divides by zero")
            done.append(Done(i, p.op, a, b, r))
        step_results[i] = done[-1].result
    if not done and claim is None:
        return Execution((), None, 0, "it names no operation")
    return Execution(tuple(done), claim, None, "")


def resolve_operand(operand: str, i: int, k: int, known: frozenset[str], step_results: dict[int, Fraction],
                    done: list[Done], used: list[Fraction]) -> Fraction | None:
    """The value of `operand` in phrase `k` of step `i`, given the numbers it may use (`known`),
    the steps' results, the operations done and the values already `used` in this phrase; None
    when the core cannot know it."""
    text = operand.lower()
    if text.startswith("the result of step"):
        ref = int(text.split()[-1]) - 1
        return step_results.get(ref) if ref < i else None
    if text in ("that", "it") and k == 1:
        return done[-1].result  # "..., then add 26 to that": the result just computed
    if text == "the amount so far" or text in _VAGUE:
        latest = [d.result for d in reversed(done)]
        if text == "the amount so far":
            return latest[0] if latest else None
        return next((r for r in latest if r not in used), None)
    number = operand.lstrip("$")
    return Fraction(int(number)) if number in known else None
