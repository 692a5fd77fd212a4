"""`sim-teacher`'s code strategies for a `funcs` problem, in the styles of its arith ones.

It reads the gold program back from the docstring and writes, in the step language of
`sim/code_follow.py`: `atomic` (one step per operation), `compound` (an operation merged into
the next: "Keep only the even numbers, then add 3 to each number."), `verbose` (steps padded
past what the core reads as an instruction), `vague` (an operation's number as "the given
amount"), `wrong` (one operation or number changed so that the function's result changes) and
`leak` (the solution's own lines of code as the steps, which the leak rule catches). The style
mixes and rates are the arith teacher's `WorldSpec` fields.

Its habit, like a coder who thinks in list comprehensions: a filter followed by a map is one
thought ("keep the even numbers, then square each"), so at such a site it writes them as one
step with the arith teacher's habit mix.
"""

from __future__ import annotations

import random

from exectune_jax.data.tasks.funcs import OPS, Program, body, inputs_for, outputs
from exectune_jax.sim.code_follow import render_step
from exectune_jax.world import WORLD, WorldSpec

_FILTERS = ("keep_even", "keep_odd", "keep_gt", "keep_lt")
_MAPS = ("add_each", "mul_each", "square")
_PREAMBLES = (
    "Read the docstring again to be sure of what the function must do here and then",
    "Keeping the variable from the signature and its type in mind at this point, now",
    "Before going on to the next sentence of the description it is time to",
)
_PROBES = 12  # inputs the teacher checks a wrong strategy's change on


def habit_sites(program: Program) -> list[int]:
    """Operations j that filter the list and whose next operation maps each kept value."""
    ops = program.ops
    return [j for j in range(len(ops) - 1) if ops[j][0] in _FILTERS and ops[j + 1][0] in _MAPS]


def write(program: Program, style: str, rng: random.Random, world: WorldSpec = WORLD) -> list[str] | None:
    """Steps of `style` for `program`, or None when the style does not apply to it."""
    return _WRITERS[style](program, rng, world)


def atomic(program: Program, rng: random.Random | None = None, world: WorldSpec = WORLD) -> list[str]:
    return [render_step(s) for s in program.ops]


def _compound(program: Program, rng: random.Random, world: WorldSpec) -> list[str] | None:
    """Merge an operation into the next one (always at a habit site, else at the merge rate)."""
    ops = program.ops
    mergeable = [j for j in range(len(ops) - 1) if OPS[ops[j + 1][0]].returns is None]
    if not mergeable:
        return None
    habit = set(habit_sites(program))
    merged = {j for j in mergeable if j in habit or rng.random() < world.teacher_merge_rate} or {rng.choice(mergeable)}
    merged = {j for j in sorted(merged) if j - 1 not in merged}
    steps: list[str] = []
    for j, step in enumerate(ops):
        text = render_step(step)
        if j - 1 in merged:
            steps[-1] = f"{steps[-1].rstrip('.')}, then {text[0].lower()}{text[1:]}"
        else:
            steps.append(text)
    return steps


def _verbose(program: Program, rng: random.Random, world: WorldSpec) -> list[str]:
    steps = atomic(program)
    chosen = {j for j in range(len(steps)) if rng.random() < world.teacher_verbose_rate} or {rng.randrange(len(steps))}
    return [f"{rng.choice(_PREAMBLES)} {s[0].lower()}{s[1:]}" if j in chosen else s for j, s in enumerate(steps)]


def _vague(program: Program, rng: random.Random, world: WorldSpec) -> list[str] | None:
    numbered = [j for j, (_, k) in enumerate(program.ops) if k is not None]
    if not numbered:
        return None
    chosen = {j for j in numbered if rng.random() < world.teacher_vague_rate} or {rng.choice(numbered)}
    return [render_step(s, vague=j in chosen) for j, s in enumerate(program.ops)]


def _wrong(program: Program, rng: random.Random, world: WorldSpec) -> list[str] | None:
    """Atomic steps with one operation changed so that the function's result changes; a new
    number is one of the problem's where one fits, so the core can carry the step out."""
    probes = inputs_for(program.domain, random.Random(rng.random()), _PROBES)
    right = outputs(program, body(program), probes)
    for _ in range(16):
        ops = list(program.ops)
        j = rng.randrange(len(ops))
        name = ops[j][0]
        same = [n for n, op in OPS.items()
                if op.domain == program.domain and (op.returns is None) == (OPS[name].returns is None) and n != name]
        other = rng.choice(same)
        ops[j] = (other, _number(OPS[other].k, program, rng))
        wrong = Program(program.name, program.domain, tuple(ops))
        if outputs(wrong, body(wrong), probes) != right:
            return atomic(wrong)
    return None


def _number(bounds: tuple[int, int] | None, program: Program, rng: random.Random) -> int | None:
    if bounds is None:
        return None
    fits = [k for _, k in program.ops if k is not None and bounds[0] <= k <= bounds[1]]
    return rng.choice(fits) if fits else rng.randint(*bounds)


def _leak(program: Program, rng: random.Random, world: WorldSpec) -> list[str]:
    """The solution's own lines, one per step."""
    return body(program)


_WRITERS = {"atomic": atomic, "compound": _compound, "verbose": _verbose, "vague": _vague,
            "wrong": _wrong, "leak": _leak}
