"""`sim-core`: a deterministic stand-in for a black-box core model.

Alone, it solves an arith problem when the problem's latent difficulty (a hash of its text)
falls under a success rate that drops with the number of steps, flipped by a little
per-sample noise. Real cores are consistent per problem, and so is this one: a strategy that
worked once through the core's own skill keeps working on replay.

Given a strategy (or free-form advice) it *executes* it step by step (`sim/follow.py`: each
step is carried out with a probability set by what it asks, decided by a stable hash of the
execution, its sample index included). It
writes one short line per step it carries out, so a wrong strategy yields a wrong answer. At
the first step it does not carry out it goes on with its own reasoning from there: what it
computed so far stays, and if that was on track (every result so far is one of the problem's
true intermediate amounts) it solves the rest alone with the success rate of the operations
left, so advice that names the right operations helps even when not followed to the end. Two
world values (both 0 in version 2) soften what a strategy not followed to the end does: an
off-track core re-solves the problem from the start at its own rate with probability
`core_recovers`, and each operation left that the text names correctly (`sim/hints.py`) spares
its own reasoning `named_op_value` of that operation's difficulty.
Where it sets a strategy aside it says so in one sentence, unless the world's
`core_announces_aside` is false (then only its computations show it). Every number it behaves
by is a field of `world.py`'s `WorldSpec`. A `funcs` code problem it answers in Python
(`sim/coder.py`); other code problems are outside the simulator.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from exectune_jax.data.tasks.answers import numbers_in
from exectune_jax.data.tasks.arith import Program, apply_op, operand_value, parse_problem, run_program
from exectune_jax.gcop import prompts
from exectune_jax.sim import coder, follow, hints
from exectune_jax.sim.steps import SYMBOLS, show
from exectune_jax.world import WORLD, WorldSpec, following

# name -> WorldSpec field
PROFILES = {"sim-core": "core", "sim-core-strong": "core_strong", "sim-core-next": "core_next"}

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


def follow_draw(core: str, problem: str, strategy: str, step: int, seed: int) -> float:
    """The uniform number that decides whether step `step` of `strategy` is carried out in the
    execution answering with `seed` (the request's sample index, `server.model_seed`): each
    execution draws anew, so one strategy executed under many seeds is followed at the world's
    rate. Seed 0 leaves the seed out of the hash, which keeps every sample-0 execution (RL at a
    greedy core, acceptance and eval at their default one sample) what world version 2 made it."""
    return unit("follow", core, problem, strategy, step, *((seed,) if seed else ()))


def sample_rng(name: str, messages, temperature: float, seed: int) -> random.Random:
    canon = [[m["role"], m["content"]] if isinstance(m, dict) else list(m) for m in messages]
    return random.Random(unit(name, canon, round(float(temperature), 6), int(seed)))


@dataclass(frozen=True)
class Reply:
    text: str
    followed: bool | None  # the core carried out every step of the strategy; None: no strategy
    carried_out: int = 0  # operations of the strategy it carried out before it stopped (or all)


class SimCore:
    """A core model with the behaviour profile `name` (a key of PROFILES)."""

    def __init__(self, name: str = "sim-core", world: WorldSpec = WORLD) -> None:
        if name not in PROFILES:
            raise ValueError(f"unknown simulated core {name!r}; known: {', '.join(PROFILES)}")
        self.name = name
        self.world = world
        self.profile = getattr(world, PROFILES[name])
        self.reads = following(world, PROFILES[name])  # the world with this core's follow probabilities

    def solo_rate(self, steps: float) -> float:
        """Probability the core alone solves a problem of `steps` operations (fewer where some
        are spared by a hint)."""
        rate = self.profile.intercept - self.profile.slope * steps
        return min(self.world.success_ceil, max(self.world.success_floor, rate))

    def complete(self, messages, *, max_tokens: int = 512, temperature: float = 0.0, seed: int = 0) -> str:
        return self.respond(messages, temperature=temperature, seed=seed).text

    def respond(self, messages, *, temperature: float = 0.0, seed: int = 0) -> Reply:
        """The reply and whether the core followed the whole strategy (its ground truth)."""
        rng = sample_rng(self.name, messages, temperature, seed)
        problem = prompts.problem_text(messages)
        strategy = prompts.strategy_text(messages)
        if prompts.family_of(messages) == "code":
            written = coder.respond(self, problem, strategy, rng, unit("latent", problem),
                                    lambda i: follow_draw(self.name, problem, strategy, i, seed))
            if written is None:  # not a funcs problem: outside the simulator, it follows no strategy
                return Reply(_code_reply(problem), None if strategy is None else False)
            return Reply(*written)
        if strategy is None:
            return Reply(self._attempt(problem, rng), None)
        run = follow.execute(
            strategy, frozenset(numbers_in(problem)), self.reads,
            carried_out=lambda i, p: follow_draw(self.name, problem, strategy, i, seed) < p,
            slip=lambda: Fraction(rng.choice((1, -1, 10))) if rng.random() < self.profile.slip else Fraction(0),
        )
        if run.followed_all:
            return Reply(_followed(run), True, len(run.done))
        if not run.done:
            note = (f"I cannot follow the strategy ({run.reason}), so I will solve the problem my own way.\n"
                    if self.world.core_announces_aside else "")
            return Reply(note + self._attempt(problem, rng, strategy), False)
        return Reply(self._continue(problem, strategy, run, rng, seed), False, len(run.done))

    # ------------------------------------------------------------ on its own

    def _attempt(self, problem: str, rng: random.Random, text: str | None = None) -> str:
        program = parse_problem(problem)
        if program is None:
            return _guess(problem, rng)
        return self._reason(problem, program, 0, True, rng, self._spared(text, program, 0))

    def _spared(self, text: str | None, program: Program, start: int) -> float:
        """How many operations' difficulty the text spares the core's own reasoning from `start`:
        `named_op_value` for each operation left that the text names correctly."""
        if text is None or not self.world.named_op_value:  # version 2's world reads no hints
            return 0.0
        return self.world.named_op_value * sum(j >= start for j in hints.named_correctly(text, program))

    def _reason(self, problem: str, program: Program, start: int, on_track: bool, rng: random.Random,
                spared: float = 0.0) -> str:
        """Its own reasoning over the program's operations from `start`; right only when on track
        and the operations left, less `spared`, fall under its success rate (flipped by sampling
        noise)."""
        rate = self.solo_rate(len(program.ops) - start - spared)
        solved = on_track and ((unit("latent", problem) < rate) != (rng.random() < self.profile.flip))
        ops = program.ops if solved else _mistake(program, rng, min(start, len(program.ops) - 1))
        return _reasoning(Program(ops, program.quantities), rng, start, self.world.own_filler_per_step)

    def _continue(self, problem: str, strategy: str, run: follow.Execution, rng: random.Random, seed: int) -> str:
        """Followed part of the strategy, then its own reasoning from the step it stopped at, or,
        off track and recovering, from the start."""
        lines = ["I will follow the strategy."] + _step_lines(run)
        if self.world.core_announces_aside:
            lines.append(f"I cannot carry out the rest ({run.reason}), so I continue my own way.")
        program = parse_problem(problem)
        if program is None:
            return "\n".join(lines) + "\n" + _guess(problem, rng)
        gold = run_program(program)
        on_track = all(d.result in gold for d in run.done)
        start = len({r for r in gold if any(d.result == r for d in run.done)}) if on_track else len(run.done)
        if not on_track and unit("recover", self.name, problem, strategy, seed) < self.world.core_recovers:
            start, on_track = 0, True
        start = min(start, len(program.ops))
        return "\n".join(lines) + "\n" + self._reason(problem, program, start, on_track, rng,
                                                       self._spared(strategy, program, start))


def _step_lines(run: follow.Execution) -> list[str]:
    return [f"Step {i}: {show(d.a)} {SYMBOLS[d.op]} {show(d.b)} = {show(d.result)}."
            for i, d in enumerate(run.done, start=1)]


def _followed(run: follow.Execution) -> str:
    lines = ["I will follow the strategy.", *_step_lines(run)]
    if run.claim is not None:
        lines.append(f"The strategy says the answer is {run.claim}.")
        answer = run.claim
    else:
        answer = show(run.done[-1].result)
    lines.append(f"The answer is {answer}.")
    return "\n".join(lines)


def _reasoning(program: Program, rng: random.Random, start: int = 0, filler: int = 1) -> str:
    """The core's own chain of thought from operation `start`: a long line per operation (with
    `filler` checking sentences), then the final answer."""
    lines = ["Let me work through the problem step by step."] if start == 0 else []
    results: list[Fraction] = []
    for i, (op, left, right) in enumerate(program.ops, start=1):
        a = operand_value(left, program.quantities, results)
        b = operand_value(right, program.quantities, results)
        results.append(apply_op(op, a, b))
        if i > start:
            lead = _ATTEMPT[op].format(a=show(a), b=show(b))
            checks = "".join(f" {rng.choice(_CHECKS)}" for _ in range(filler))
            lines.append(f"Step {i}: {lead} {show(a)} {SYMBOLS[op]} {show(b)} = {show(results[-1])}.{checks}")
    lines.append(f"The answer is {show(results[-1])}.")
    return "\n".join(lines)


def _mistake(program: Program, rng: random.Random, first: int = 0) -> tuple[tuple[str, str, str], ...]:
    """The gold program with one plausible error at operation `first` or later that changes the
    (integer) answer."""
    gold = run_program(program)[-1]
    swaps = {"add": "subtract", "subtract": "add", "multiply": "add", "divide": "multiply"}
    n_q = len(program.quantities)
    for _ in range(16):
        ops = list(program.ops)
        j = rng.randrange(first, len(ops))
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

