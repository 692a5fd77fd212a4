"""`python -m exectune_jax.sim.calibrate [--funcs [N]] [key=value ...]`: the simulated world
measured on the validation split (the default world, or the one whose values the arguments name,
as `sim.world` does: `follow_compound=0.25`, `teacher_habit_rate=0.4`); arith's, or with
`--funcs` the code world's on the first N funcs problems (each reply run in the sandbox).

Prints, for the core alone and for each kind of strategy the world's guides and teacher write,
accuracy, the share of strategies the core followed to the end, and output tokens per reply.
It runs as a stage of its own, so the split guard refuses it the test split: the world's
values are chosen on these numbers (docs/world.md), never on test.
"""

from __future__ import annotations

import random
import sys
from collections import Counter, defaultdict

import yaml

from exectune_jax import tokens
from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.data.tasks.funcs import program_of
from exectune_jax.gcop import prompts, strategy
from exectune_jax.sim import code_teacher, guide, models, teacher
from exectune_jax.world import WORLD, WorldSpec, world_from

STYLES = ("atomic", "compound", "verbose", "vague", "wrong", "leak")


def measure(problems, task, world: WorldSpec = WORLD, family: str = "math"
            ) -> tuple[dict[str, list[tuple[bool, bool | None, int]]], Counter]:
    core = models.get("sim-core", world)

    def run(p, text, c=core):
        reply = c.respond(prompts.core_messages(p, family, text))
        return task.check(p, reply.text).correct, reply.followed, tokens.count(reply.text)

    rows = {"core alone": [run(p, None) for p in problems],
            "strong core alone": [run(p, None, models.get("sim-core-strong", world)) for p in problems]}
    if family == "math":
        rows["base-guide advice (prose)"] = [run(p, guide.advice(p, world=world)) for p in problems]
    writes, program = (teacher.write, lambda p: parse_problem(p.prompt)) if family == "math" else (
        code_teacher.write, program_of)
    for style in STYLES:
        written = ((p, writes(program(p), style, random.Random(i), world)) for i, p in enumerate(problems))
        rows[f"teacher {style}"] = [run(p, strategy.render(s)) for p, s in written if s]
    mix, styles = [], Counter()
    for p in problems:
        reply = models.get("sim-teacher", world).complete(prompts.teacher_propose_messages(p, family),
                                                   max_tokens=512, temperature=1.0, seed=0)
        text, style = reply.rsplit("\nstyle: ", 1)
        styles[style] += 1
        mix.append(run(p, text))
    rows["teacher first proposals"] = mix
    return rows, styles


def main(argv: list[str]) -> int:
    code = bool(argv) and argv[0] == "--funcs"
    argv = argv[1:] if code else argv
    limit = int(argv.pop(0)) if code and argv and argv[0].isdigit() else None
    overrides = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in argv)}
    world = world_from(overrides)
    task = tasks.get("funcs" if code else "arith")
    with tasks.reading_as("calibrate"):
        problems = task.problems("validation")[:limit]
    rows, styles = measure(problems, task, world, task.family)
    print(f"world {world.version} ({world.hash}, overrides {overrides}), {task.name} validation split, "
          f"{len(problems)} problems")
    print("| strategies | n | accuracy | followed to the end | output tokens |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        followed = [f for _, f, _ in r if f is not None]
        share = f"{sum(followed) / len(followed):.3f}" if followed else "-"
        print(f"| {name} | {len(r)} | {sum(c for c, _, _ in r) / len(r):.3f} | {share} | "
              f"{sum(t for _, _, t in r) / len(r):.1f} |")
    print("teacher first-proposal styles:", dict(styles.most_common()))
    by_steps = defaultdict(list)
    for p, (correct, _, _) in zip(problems, rows["core alone"]):
        by_steps[p.meta["steps"]].append(correct)
    print("core alone by steps:", {k: round(sum(v) / len(v), 3) for k, v in sorted(by_steps.items())})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
