"""`python -m exectune_jax.sim.calibrate [--funcs [N]] [key=value ...]`: the simulated world
measured on the validation split (the default world, or the one whose values the arguments name,
as `sim.world` does: `follow_compound=0.25`, `teacher_habit_rate=0.4`); arith's, or with
`--funcs` the code world's on the first N funcs problems (each reply run in the sandbox).

Prints, for the core alone and for each kind of strategy the world's guides and teacher write,
accuracy, the share of strategies the core followed to the end, and output tokens per reply; for
arith also how sim-judge's verdicts on the teacher's first proposals agree with the core's truth,
its error rate in each direction, and the judge rates that world version 3's rule derives from
them (docs/world.md, "The rule for version 3"; meaningful where the judge's rates are 0).
It runs as a stage of its own, so the split guard refuses it the test split: the world's
values are chosen on these numbers (docs/world.md), never on test.

`python -m exectune_jax.sim.calibrate --habit-anchor GSM8K_TRAIN.jsonl` instead counts the
teacher habit's real-world anchor (docs/world.md, "The teacher's habit rate"): how often GSM8K's
step-by-step solutions fold a product of two of the problem's numbers into the calculation that
uses it, and the `teacher_habit_rate` the rule derives from that.
"""

from __future__ import annotations

import ast
import random
import sys
from collections import Counter, defaultdict
from decimal import Decimal

import yaml

from exectune_jax import tokens
from exectune_jax.data import tasks
from exectune_jax.data.tasks.answers import normalize_number, numbers_in
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.data.tasks.base import read_jsonl
from exectune_jax.data.tasks.funcs import program_of
from exectune_jax.data.tasks.gsm8k import gold_program
from exectune_jax.gcop import prompts, strategy
from exectune_jax.gcop.follow import agreement, parse_judge_reply
from exectune_jax.sim import code_teacher, guide, models, teacher
from exectune_jax.world import WORLD, WorldSpec, world_from

STYLES = ("atomic", "compound", "verbose", "vague", "wrong", "leak")
# version 3's targets for the judge's total error in each direction (docs/world.md): lenient as
# often as strong judges disagree with humans (MT-Bench ~85%), strict at a 96% true-positive rate
TARGET_FALSE_YES, TARGET_FALSE_NO = 0.15, 0.04


def measure(problems, task, world: WorldSpec = WORLD, family: str = "math"
            ) -> tuple[dict[str, list[tuple[bool, bool | None, int]]], Counter, list[tuple[str, bool]]]:
    """Rows per kind of strategy, the teacher's first-proposal styles, and sim-judge's verdict
    beside the core's truth on each first proposal (math only)."""
    core = models.get("sim-core", world)
    judge = models.get("sim-judge", world)
    judged = []

    def run(p, text, c=core, judge_it=False):
        reply = c.respond(prompts.core_messages(p, family, text))
        if judge_it:
            said = judge.complete(prompts.judge_follow_messages(p.prompt, text, reply.text))
            judged.append((parse_judge_reply(said)[0], reply.followed))
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
        mix.append(run(p, text, judge_it=family == "math"))
    rows["teacher first proposals"] = mix
    return rows, styles, judged


def rule_rate(own_error: float, target: float) -> float:
    """The flip rate that brings a judge erring `own_error` of the time in one direction to
    `target` in total: own + (1 - own) * rate = target, floored at 0, to 0.01."""
    return round(max(0.0, (target - own_error) / (1.0 - own_error)), 2)


def judge_lines(judged: list[tuple[str, bool]]) -> list[str]:
    got = agreement(judged)
    c = got["confusion"]
    e_yes = c["yes_false"] / max(1, c["yes_false"] + c["no_false"])
    e_no = c["no_true"] / max(1, c["yes_true"] + c["no_true"])
    return [f"sim-judge on the teacher's first proposals: agreement {got['agreement']:.3f}, "
            f"kappa {got['kappa']:.3f}, judged yes: followed {c['yes_true']} / not {c['yes_false']}, "
            f"judged no: followed {c['no_true']} / not {c['no_false']}",
            f"its error rates: not followed called followed {e_yes:.3f}, followed called not {e_no:.3f}; "
            f"version 3's rule gives judge_false_yes={rule_rate(e_yes, TARGET_FALSE_YES)}, "
            f"judge_false_no={rule_rate(e_no, TARGET_FALSE_NO)}"]


_ARITHMETIC = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.Div,
               ast.USub, ast.UAdd)


def _expression(text: str) -> ast.expr | None:
    """A calculator annotation as an arithmetic syntax tree, or None when it is anything else."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None
    nodes = list(ast.walk(tree))
    if not all(isinstance(n, _ARITHMETIC) for n in nodes) or any(
            isinstance(n, ast.Constant) and type(n.value) not in (int, float) for n in nodes):
        return None
    return tree.body


def _given_product(node: ast.AST, given: set[Decimal]) -> bool:
    """`node` multiplies two numbers written in the problem."""
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
            and all(isinstance(side, ast.Constant) and Decimal(repr(side.value)) in given
                    for side in (node.left, node.right)))


def _constants(node: ast.AST) -> set[Decimal]:
    return {Decimal(repr(n.value)) for n in ast.walk(node) if isinstance(n, ast.Constant)}


def solution_habit_sites(question: str, solution: str) -> Counter:
    """A GSM8K solution's habit sites (docs/world.md's rule): `folded` where a product of two of
    the question's numbers is an operand of another operation of the same annotation, `separate`
    where an annotation is exactly such a product and the next annotation uses its result;
    `unparsed` counts annotations that are not arithmetic expressions."""
    given = {Decimal(n) for n in numbers_in(question)}
    counts = Counter()
    steps = []
    for expression, value in gold_program(solution):
        tree = _expression(expression)
        counts["unparsed"] += tree is None
        steps.append((tree, normalize_number(value)))
    for i, (tree, value) in enumerate(steps):
        if tree is None:
            continue
        counts["folded"] += sum(_given_product(child, given) for parent in ast.walk(tree)
                                if isinstance(parent, ast.BinOp) for child in (parent.left, parent.right))
        following = steps[i + 1][0] if i + 1 < len(steps) else None
        counts["separate"] += (_given_product(tree, given) and value is not None and following is not None
                               and Decimal(value) in _constants(following))
    return +counts  # without the kinds that did not occur


def habit_anchor(path: str) -> list[str]:
    """The habit sites of every solution in a GSM8K JSONL file and the rate the rule derives."""
    counts = Counter()
    for _, row in read_jsonl(path, {"question": str, "answer": str}):
        counts += solution_habit_sites(row["question"], row["answer"])
    sites = counts["folded"] + counts["separate"]
    rate = counts["folded"] / sites if sites else float("nan")
    return [f"{path}: folded {counts['folded']}, separate {counts['separate']}, "
            f"annotations not parsed {counts['unparsed']}",
            f"folded share {rate:.4f}; the rule gives teacher_habit_rate={round(rate * 20) / 20:.2f}"]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--habit-anchor"] and len(argv) == 2:
        print("\n".join(habit_anchor(argv[1])))
        return 0
    code = bool(argv) and argv[0] == "--funcs"
    argv = argv[1:] if code else argv
    limit = int(argv.pop(0)) if code and argv and argv[0].isdigit() else None
    overrides = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in argv)}
    world = world_from(overrides)
    task = tasks.get("funcs" if code else "arith")
    with tasks.reading_as("calibrate"):
        problems = task.problems("validation")[:limit]
    rows, styles, judged = measure(problems, task, world, task.family)
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
    for line in judge_lines(judged) if judged else []:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
