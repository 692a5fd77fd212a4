"""How `sim-core` writes Python for a `funcs` problem: following a strategy's steps where it
carries them out, its own (sometimes wrong) code otherwise.

Alone, it writes the gold program's lines when the problem's latent difficulty falls under its
success rate for the number of operations (the same rate, profile and per-sample flip as for an
arith problem), and otherwise the gold program with one plausible mistake (`funcs.OPS[op].mistake`)
that changes the function's result on inputs it tries itself. Whether the reply is right is not
decided here: the task runs its code against the hidden tests in the sandbox.

Given a strategy it carries the steps out in order (`sim/code_follow.py`), one line of code per
operation, each with the profile's slip chance of being written as that operation's mistake.
At the first step it does not carry out it writes the rest its own way: if the lines so far are
the gold program's first operations it is on track and writes the rest right at its success
rate for the operations left; otherwise it goes on with the gold program's remaining lines
after its off-track ones. Followed to the end, the function is the strategy's, right or wrong.
Where it sets a strategy aside it says so, as for arith, unless `core_announces_aside` is false.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from exectune_jax.data.tasks.answers import numbers_in
from exectune_jax.data.tasks.funcs import (
    OPS,
    Program,
    Step,
    body,
    inputs_for,
    line,
    outputs,
    parse_problem,
    signature,
)
from exectune_jax.sim import code_follow

_CHECKS = (
    "Let me make sure this also works for an empty input.",
    "That agrees with the example in the docstring so far.",
    "I keep the variable name from the signature.",
    "This keeps the value's type the same for the next line.",
)
_PROBES = 12  # inputs the core tries its own code on


def respond(core: Any, problem: str, strategy: str | None, rng: random.Random, latent: float,
            draw: Callable[[int], float]) -> tuple[str, bool | None, int] | None:
    """(reply, followed the whole strategy (None: no strategy), operations carried out) from
    `core` (a `SimCore`); None when the problem is not a funcs problem. `latent` is the problem's
    latent difficulty and `draw(i)` the uniform number that decides step i."""
    program = parse_problem(problem)
    if program is None:
        return None
    if strategy is None:
        return _own(core, program, (), True, rng, latent), None, 0
    run = code_follow.execute(strategy, program.domain, program, frozenset(numbers_in(problem)), core.world,
                              carried_out=lambda i, p: draw(i) < p)
    written = tuple((step, rng.random() < core.profile.slip) for step in run.done)
    if run.followed_all:
        return _followed(program, written), True, len(run.done)
    announce = core.world.core_announces_aside
    if not run.done:
        note = (f"I cannot follow the strategy ({run.reason}), so I will solve the problem my own way.\n"
                if announce else "")
        return note + _own(core, program, (), True, rng, latent), False, 0
    on_track = list(run.done) == list(program.ops[:len(run.done)])
    lines = ["I will follow the strategy."]
    if announce:
        lines.append(f"I cannot carry out the rest ({run.reason}), so I continue my own way.")
    return "\n".join(lines) + "\n" + _own(core, program, written, on_track, rng, latent), False, len(run.done)


def _followed(program: Program, written: tuple[tuple[Step, bool], ...]) -> str:
    code = [f"{line(step, program.variable, slip)}  # step {i}" for i, (step, slip) in enumerate(written, start=1)]
    return "I will follow the strategy.\n" + _block(program, code)


def _own(core: Any, program: Program, written: tuple[tuple[Step, bool], ...], on_track: bool,
         rng: random.Random, latent: float) -> str:
    """Its own code after the lines `written` from the strategy: the gold program's remaining
    operations, right when on track and under its success rate (flipped by sampling noise),
    else with one mistake among them."""
    start = len(written)
    left = program.ops[start:]
    solved = on_track and ((latent < core.solo_rate(len(left))) != (rng.random() < core.profile.flip))
    mistaken = frozenset() if solved or not on_track or not left else _mistake(program, start, rng)
    explained = ["Let me write the function step by step."] if not written else []
    for name, k in left:
        checks = " ".join(rng.choice(_CHECKS) for _ in range(core.world.own_filler_per_step))
        explained.append(f"Next: {OPS[name].doc[0].format(k=k)} {checks}".strip())
    code = [line(step, program.variable, slip) for step, slip in written]
    code += [line(step, program.variable, start + j in mistaken) for j, step in enumerate(left)]
    return "\n".join(explained) + "\n" + _block(program, code)


def _mistake(program: Program, first: int, rng: random.Random) -> frozenset[int]:
    """One operation at `first` or later whose mistake changes the function's result on the
    core's own probe inputs; the last one when none does (then the tests may still pass)."""
    probes = inputs_for(program.domain, random.Random(rng.random()), _PROBES)
    right = outputs(program, body(program), probes)
    order = list(range(first, len(program.ops)))
    rng.shuffle(order)
    for j in order:
        if outputs(program, body(program, frozenset({j})), probes) != right:
            return frozenset({j})
    return frozenset({len(program.ops) - 1})


def _block(program: Program, code: list[str]) -> str:
    if not code or not code[-1].startswith("return"):
        code = [*code, f"return {program.variable}"]
    lines = "\n".join(f"    {x}" for x in code)
    return f"```python\n{signature(program)}\n{lines}\n```"
