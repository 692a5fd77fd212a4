"""`sim-teacher`: a deterministic stand-in for a strong teacher model.

It reads the gold program back from an arith problem in the prompt and writes a strategy in
one of several styles, like a real teacher whose proposals are not all usable by a weaker
core: `atomic` (one followable operation per step), `compound` (two operations in one step),
`verbose` (steps too long to follow), `vague` (references such as "the previous result"),
`wrong` (one wrong operation or operand) and `leak` (states the final answer). The style is
named on a line after the block, outside it, so acceptance can report rates per style. When
asked to revise a strategy the core failed on, it writes an atomic one with high probability.

Like a strong model, it has a habit: it folds a count-times-size multiplication into the step
that uses it ("Multiply 9 by 12, then add 26 to that."), so most of its first proposals on
problems with such a step are compound. The core carries a compound step out only part of
the time (`WorldSpec.follow_compound`) and otherwise goes on alone from there: a guide that
imitates the teacher's proposals learns the habit, acceptance sampling drops it only where
the core then went wrong, and structure-aware RL trains the rest away. Style mix, habit and
rates are `WorldSpec` fields. A `funcs` code problem gets the same styles in code's step
language (`sim/code_teacher.py`); other code problems a generic strategy.
"""

from __future__ import annotations

import random
from fractions import Fraction

from exectune_jax.data.tasks import funcs
from exectune_jax.data.tasks.arith import Program, parse_problem, run_program
from exectune_jax.gcop import prompts
from exectune_jax.gcop.strategy import render
from exectune_jax.sim import code_teacher
from exectune_jax.sim.core import sample_rng
from exectune_jax.sim.steps import render_operand, render_step, show
from exectune_jax.world import WORLD, WorldSpec


_VAGUE = ("that", "the previous result", "the total", "this amount", "the running total", "it")
_PREAMBLES = (
    "Start from the numbers the problem gives and, keeping track of the running amount carefully,",
    "To see how the amount changes at this point of the story you should now",
    "Read this part of the problem again to be sure of what happens and then",
)
_GENERIC = {
    "math": ("Find the quantities the problem gives.", "Work out each intermediate amount with one operation.",
             "Combine the amounts to answer the question."),
    "code": ("Read the function signature and the examples.", "Handle the empty and edge cases first.",
             "Build the result in one pass over the input.", "Return the result in the expected type."),
}


class SimTeacher:
    name = "sim-teacher"

    def __init__(self, world: WorldSpec = WORLD) -> None:
        self.world = world

    def complete(self, messages, *, max_tokens: int = 512, temperature: float = 1.0, seed: int = 0) -> str:
        rng = sample_rng(self.name, messages, temperature, seed)
        family = prompts.family_of(messages)
        problem = prompts.problem_text(messages)
        program = parse_problem(problem) if family == "math" else funcs.parse_problem(problem)
        if program is None:
            return render(_GENERIC[family]) + "\nstyle: generic"
        writes, sites = (write, habit_sites) if family == "math" else (code_teacher.write, code_teacher.habit_sites)
        w = self.world
        if prompts.previous_strategy(messages) is not None:
            mix = w.teacher_revise
        else:
            mix = w.teacher_habit if sites(program) else w.teacher_propose
        style = rng.choices([s for s, _ in mix], weights=[p for _, p in mix])[0]
        steps = writes(program, style, rng, w)
        if steps is None:
            style, steps = "atomic", writes(program, "atomic", rng, w)
        return f"{render(steps)}\nstyle: {style}"


def write(program: Program, style: str, rng: random.Random, world: WorldSpec = WORLD) -> list[str] | None:
    """Steps of `style` for `program`, or None when the style does not apply to it."""
    return _WRITERS[style](program, rng, world)


def atomic(program: Program, rng: random.Random | None = None, world: WorldSpec = WORLD) -> list[str]:
    q = program.quantities
    return [render_step(op, render_operand(a, q), render_operand(b, q)) for op, a, b in program.ops]


def habit_sites(program: Program) -> list[int]:
    """Steps j that multiply two problem numbers and whose result step j + 1 uses at once."""
    ops = program.ops
    return [j for j in range(len(ops) - 1)
            if ops[j][0] == "multiply" and ops[j][1][0] == ops[j][2][0] == "q" and f"r{j}" in ops[j + 1][1:]]


def _compound(program: Program, rng: random.Random, world: WorldSpec) -> list[str] | None:
    """Merge an operation into the next one when the next uses its result (always at a habit site)."""
    q, ops = program.quantities, program.ops
    mergeable = [j for j in range(len(ops) - 1) if f"r{j}" in ops[j + 1][1:]]
    if not mergeable:
        return None
    habit = set(habit_sites(program))
    merged = {j for j in mergeable if j in habit or rng.random() < world.teacher_merge_rate} or {rng.choice(mergeable)}
    merged = {j for j in sorted(merged) if j - 1 not in merged}
    new_index, steps, n = {}, [], 0
    for j, (op, a, b) in enumerate(ops):
        if j - 1 in merged:
            new_index[j] = n - 1
            then = render_step(op, *(("that" if r == f"r{j - 1}" else _ref(r, q, new_index)) for r in (a, b)))
            steps[-1] = steps[-1].rstrip(".") + ", then " + then[0].lower() + then[1:]
        else:
            new_index[j] = n
            steps.append(render_step(op, _ref(a, q, new_index), _ref(b, q, new_index)))
            n += 1
    return steps


def _ref(ref: str, quantities: tuple[int, ...], new_index: dict[int, int]) -> str:
    return render_operand(ref, quantities) if ref[0] == "q" else f"the result of step {new_index[int(ref[1:])] + 1}"


def _verbose(program: Program, rng: random.Random, world: WorldSpec) -> list[str]:
    steps = atomic(program)
    chosen = {j for j in range(len(steps)) if rng.random() < world.teacher_verbose_rate} or {rng.randrange(len(steps))}
    return [f"{rng.choice(_PREAMBLES)} {s[0].lower()}{s[1:]}" if j in chosen else s for j, s in enumerate(steps)]


def _vague(program: Program, rng: random.Random, world: WorldSpec) -> list[str] | None:
    q = program.quantities
    refs = [(j, side) for j, op in enumerate(program.ops) for side in (1, 2) if op[side][0] == "r"]
    if not refs:
        return None
    chosen = {r for r in refs if rng.random() < world.teacher_vague_rate} or {rng.choice(refs)}
    steps = []
    for j, op in enumerate(program.ops):
        parts = [rng.choice(_VAGUE) if (j, side) in chosen else render_operand(op[side], q) for side in (1, 2)]
        steps.append(render_step(op[0], *parts))
    return steps


def _wrong(program: Program, rng: random.Random, world: WorldSpec) -> list[str] | None:
    """Atomic steps with one wrong operation or operand that changes the answer."""
    gold = run_program(program)[-1]
    swaps = {"add": "subtract", "subtract": "add", "multiply": "divide", "divide": "multiply"}
    for _ in range(16):
        ops = list(program.ops)
        j = rng.randrange(len(ops))
        op, a, b = ops[j]
        if rng.random() < 0.5:
            ops[j] = (swaps[op], a, b)
        else:
            others = [f"q{i}" for i in range(len(program.quantities))] + [f"r{i}" for i in range(j)]
            ops[j] = (op, a, rng.choice([o for o in others if o != b] or [b]))
        wrong = Program(tuple(ops), program.quantities)
        try:
            if run_program(wrong)[-1] != gold:
                return atomic(wrong)
        except ZeroDivisionError:
            continue
    return None


def _leak(program: Program, rng: random.Random, world: WorldSpec) -> list[str]:
    answer: Fraction = run_program(program)[-1]
    return [*atomic(program), f"So the answer is {show(answer)}."]


_WRITERS = {"atomic": atomic, "compound": _compound, "verbose": _verbose, "vague": _vague,
            "wrong": _wrong, "leak": _leak}
