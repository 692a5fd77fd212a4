"""`sim-core`: a deterministic stand-in for a black-box core model.

Alone, it solves an arith problem when the problem's latent difficulty (a hash of its text)
falls under a success rate that drops with the number of steps, flipped by a little
per-sample noise. Real cores are consistent per problem, and so is this one: a strategy that
worked once through the core's own skill keeps working on replay.

Given a strategy it *executes* it. Every step must be one the core can follow (see
`sim/steps.py`); then it follows all of them faithfully, so a wrong strategy yields a wrong
answer, and it writes one short line per step instead of its own long reasoning. If any step
cannot be followed it drops the strategy and solves the problem its own way. Free-form advice
(no tags) is treated the same way, sentence by sentence.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from fractions import Fraction

from exectune_jax.data.tasks.answers import numbers_in
from exectune_jax.data.tasks.arith import Program, apply_op, operand_value, parse_problem, run_program
from exectune_jax.gcop import prompts
from exectune_jax.gcop.strategy import OPEN, parse
from exectune_jax.sim.steps import SYMBOLS, Step, Unfollowable, follow, read_step, show

# name -> (success at k steps = clamp(intercept - slope * k), per-sample flip rate, slip rate per followed step)
PROFILES = {
    "sim-core": (1.11, 0.09, 0.03, 0.003),
    "sim-core-strong": (1.09, 0.055, 0.02, 0.002),
}
_FLOOR, _CEIL = 0.03, 0.98

_ATTEMPT = {
    "add": "More are added here, so I add {b} to the current amount of {a}:",
    "subtract": "Some are taken away here, so I subtract {b} from the current amount of {a}:",
    "multiply": "This part scales the amount, so I multiply {a} by {b} to get the new count:",
    "divide": "The amount is split evenly, so I divide {a} by {b} to find one share:",
}
_CHECKS = (
    "Let me double-check that this matches what the problem describes.",
    "That is consistent with the story so far, so I keep going.",
    "I will carry this number forward to the next part of the problem.",
    "Checking the arithmetic once more, this value is right.",
)


def unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a stable hash of `parts`."""
    digest = hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def sample_rng(name: str, messages, temperature: float, seed: int) -> random.Random:
    canon = [[m["role"], m["content"]] if isinstance(m, dict) else list(m) for m in messages]
    return random.Random(unit(name, canon, round(float(temperature), 6), int(seed)))


class SimCore:
    """A core model with the behaviour profile `name` ("sim-core" or "sim-core-strong")."""

    def __init__(self, name: str = "sim-core") -> None:
        if name not in PROFILES:
            raise ValueError(f"unknown simulated core {name!r}; known: {', '.join(PROFILES)}")
        self.name = name
        self.intercept, self.slope, self.flip, self.slip = PROFILES[name]

    def solo_rate(self, steps: int) -> float:
        """Probability the core alone solves a problem of `steps` operations."""
        return min(_CEIL, max(_FLOOR, self.intercept - self.slope * steps))

    def complete(self, messages, *, max_tokens: int = 512, temperature: float = 0.0, seed: int = 0) -> str:
        return self.reply(messages, max_tokens=max_tokens, temperature=temperature, seed=seed)[0]

    def reply(self, messages, *, max_tokens: int = 512, temperature: float = 0.0, seed: int = 0,
              ) -> tuple[str, bool | None]:
        """The reply, and whether it carried out the strategy (None: no strategy was given).
        The second part is the simulator's ground truth: the server keeps it to itself."""
        rng = sample_rng(self.name, messages, temperature, seed)
        problem = prompts.problem_text(messages)
        strategy = prompts.strategy_text(messages)
        if prompts.family_of(messages) == "code":
            return _code_reply(problem), None if strategy is None else False
        known = frozenset(numbers_in(problem))
        note = ""
        if strategy is not None:
            steps, why = _read_strategy(strategy, known)
            if steps is not None:
                followed = self._follow(steps, rng)
                if followed is not None:
                    return followed, True
                why = "a step of the strategy cannot be carried out"
            note = f"I cannot follow the strategy ({why}), so I will solve the problem my own way.\n"
        return note + self._attempt(problem, rng), None if strategy is None else False

    # ------------------------------------------------------------ with a strategy

    def _follow(self, steps: list[Step], rng: random.Random) -> str | None:
        slips = {i: Fraction(rng.choice((1, -1, 10))) for i in range(len(steps)) if rng.random() < self.slip}
        try:
            done, claim = follow(steps, slips)
        except (ValueError, ZeroDivisionError):
            return None
        lines = ["I will follow the strategy."]
        for i, (step, a, b, r) in enumerate(done, start=1):
            lines.append(f"Step {i}: {show(a)} {SYMBOLS[step.op]} {show(b)} = {show(r)}.")
        if claim is not None:
            lines.append(f"The strategy says the answer is {claim}.")
            answer = claim
        elif done:
            answer = show(done[-1][3])
        else:
            return None
        lines.append(f"The answer is {answer}.")
        return "\n".join(lines)

    # ------------------------------------------------------------ on its own

    def _attempt(self, problem: str, rng: random.Random) -> str:
        program = parse_problem(problem)
        if program is None:
            return _guess(problem, rng)
        solved = (unit("latent", problem) < self.solo_rate(len(program.ops))) != (rng.random() < self.flip)
        ops = program.ops if solved else _mistake(program, rng)
        return _reasoning(Program(ops, program.quantities), rng)


def _read_strategy(text: str, known: frozenset[str]) -> tuple[list[Step] | None, str]:
    """The core's reading of a strategy block or of free-form advice: steps, or why not."""
    if OPEN in text:
        parsed = parse(text)
        if not parsed.ok:
            return None, f"it is not well formed: {parsed.error.kind}"
        sentences = list(parsed.steps)
    else:
        lines = (re.sub(r"^\s*[0-9]+[.)]\s+", "", line) for line in text.splitlines())
        sentences = [s for line in lines for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s.strip()]
    if not sentences:
        return None, "it is empty"
    steps = [read_step(s, i, known) for i, s in enumerate(sentences)]
    for step in steps:
        if isinstance(step, Unfollowable):
            return None, step.reason
    return steps, ""


def _reasoning(program: Program, rng: random.Random) -> str:
    """The core's own chain of thought: a long line per operation, then the final answer."""
    lines = ["Let me work through the problem step by step."]
    results: list[Fraction] = []
    for i, (op, left, right) in enumerate(program.ops, start=1):
        a = operand_value(left, program.quantities, results)
        b = operand_value(right, program.quantities, results)
        results.append(apply_op(op, a, b))
        lead = _ATTEMPT[op].format(a=show(a), b=show(b))
        lines.append(f"Step {i}: {lead} {show(a)} {SYMBOLS[op]} {show(b)} = {show(results[-1])}. {rng.choice(_CHECKS)}")
    lines.append(f"The answer is {show(results[-1])}.")
    return "\n".join(lines)


def _mistake(program: Program, rng: random.Random) -> tuple[tuple[str, str, str], ...]:
    """The gold program with one plausible error that changes the (integer) answer."""
    gold = run_program(program)[-1]
    swaps = {"add": "subtract", "subtract": "add", "multiply": "add", "divide": "multiply"}
    n_q = len(program.quantities)
    for _ in range(16):
        ops = list(program.ops)
        j = rng.randrange(len(ops))
        op, left, right = ops[j]
        if rng.random() < 0.5:
            ops[j] = (swaps[op], left, right)
        else:
            operands = [f"q{i}" for i in range(n_q)] + [f"r{i}" for i in range(j)]
            choices = [o for o in operands if o != right]
            if not choices:
                continue
            ops[j] = (op, left, rng.choice(choices))
        try:
            value = run_program(Program(tuple(ops), program.quantities))[-1]
        except ZeroDivisionError:
            continue
        if value != gold and value.denominator == 1 and value >= 0:
            return tuple(ops)
    ops = list(program.ops)
    op, left, right = ops[-1]
    return (*ops[:-1], ("add" if op != "add" else "subtract", left, right))


def _guess(problem: str, rng: random.Random) -> str:
    """No program recognised: a short, confident, usually wrong answer from the problem's numbers."""
    numbers = [Fraction(n) for n in numbers_in(problem)] or [Fraction(rng.randint(2, 20))]
    a = rng.choice(numbers)
    b = rng.choice(numbers)
    op = rng.choice(("add", "multiply"))
    value = apply_op(op, a, b)
    return (
        "Let me work through the problem step by step.\n"
        f"Combining the amounts: {show(a)} {SYMBOLS[op]} {show(b)} = {show(value)}.\n"
        f"The answer is {show(value)}."
    )


def _code_reply(problem: str) -> str:
    """Code problems are outside the simulator: a well-formed function that does not solve it."""
    m = re.search(r"def\s+(\w+)\s*\(([^)]*)\)", problem)
    name, args = (m.group(1), m.group(2)) if m else ("solution", "*args")
    return f"```python\ndef {name}({args}):\n    raise NotImplementedError\n```"

