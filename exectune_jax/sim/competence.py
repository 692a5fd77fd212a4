"""The base guide's competence gate: does its advice read like an instruct model's?

Advisor Models start from an instruct model that reads the problem and copies its numbers. The
demo's base guide stands in for one, so before it starts the advisor rows it must show two things
on the validation split (docs/world.md, "Competence gate"):

- grounded: of its advice sentences that name an operation, the share whose operands are all
  the problem's numbers or results of earlier sentences (a reference to one, or its value written
  out), read as the core reads advice (`sim/follow.py`);
- right when followed to the end: carried out sentence by sentence with no follow chance and no
  slip, its advice gives the right answer at least as often as the core alone does. Advice that
  cannot be carried out to the end (a number not in the problem, no operation at all) counts as
  not right.

The functions here measure texts already written; `bench/base_guide_competence.py` writes them
with a guide and prints the measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from exectune_jax.data.tasks.answers import numbers_in
from exectune_jax.data.tasks.arith import apply_op
from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop import prompts
from exectune_jax.sim import follow
from exectune_jax.sim.core import SimCore
from exectune_jax.sim.steps import show
from exectune_jax.world import WORLD, WorldSpec

GROUNDED_SHARE = 0.90  # the gate: at least this share of advice sentences grounded


def grounded_sentences(problem: str, text: str) -> tuple[int, int]:
    """(grounded sentences, sentences naming an operation) of `text` for `problem`. Each sentence
    is judged on its own operands: every written number is one of the problem's or the value of
    an earlier sentence's result, and every reference names an earlier result. Results are
    computed from the numbers as written, so a sentence after an ungrounded one may still be
    grounded."""
    steps, _, _ = follow.sentences_of(text)
    if steps is None:
        return 0, 0
    numbers = set(numbers_in(problem))
    done: list[follow.Done] = []
    step_results: dict[int, Fraction] = {}
    grounded = total = 0
    for i, sentence in enumerate(steps):
        body = sentence.strip().rstrip(".").strip()
        found = follow.phrases(body)
        if follow.claim_of(body) is not None or not found:
            continue
        total += 1
        allowed = numbers | {show(d.result) for d in done}
        written = {o.lstrip("$") for p in found for o in (p.first, p.second) if o.lstrip("$").isdigit()}
        results = _carry_out(found, i, frozenset(allowed | written), step_results, done)
        if results is not None:
            grounded += written <= allowed
            done += results
            step_results[i] = results[-1].result
    return grounded, total


def _carry_out(found, i: int, known: frozenset[str], step_results: dict[int, Fraction],
               done: list[follow.Done]) -> list[follow.Done] | None:
    """The operations of one sentence, or None when an operand is unknown or it divides by 0."""
    out: list[follow.Done] = []
    for k, p in enumerate(found):
        values: list[Fraction] = []
        for operand in (p.first, p.second):
            value = follow.resolve_operand(operand, i, k, known, step_results, done + out, values)
            if value is None:
                return None
            values.append(value)
        # "Add X to Y" and "Subtract X from Y" name the right operand first.
        a, b = (values[1], values[0]) if p.op in ("add", "subtract") else (values[0], values[1])
        try:
            out.append(follow.Done(i, p.op, a, b, apply_op(p.op, a, b)))
        except ZeroDivisionError:
            return None
    return out


def answer_followed_to_the_end(problem: str, text: str, world: WorldSpec = WORLD) -> str | None:
    """The answer `text` gives when every sentence is carried out as written (no follow chance,
    no slip); None when it cannot be carried out to the end."""
    run = follow.execute(text, frozenset(numbers_in(problem)), world,
                         carried_out=lambda i, p: True, slip=lambda: Fraction(0))
    if not run.followed_all:
        return None
    return run.claim if run.claim is not None else show(run.done[-1].result)


def measure(problems: Sequence[Problem], texts: Sequence[str], task, world: WorldSpec = WORLD,
            core: str = "sim-core") -> dict:
    """The gate's two numbers for `texts` (one per problem), beside the core alone's accuracy in
    `world` (sample 0), and whether the gate holds."""
    grounded = total = right = 0
    for p, text in zip(problems, texts, strict=True):
        g, n = grounded_sentences(p.prompt, text)
        grounded, total = grounded + g, total + n
        answer = answer_followed_to_the_end(p.prompt, text, world)
        right += answer is not None and task.check(p, f"The answer is {answer}.").correct
    solver = SimCore(core, world)
    alone = sum(task.check(p, solver.complete(prompts.core_messages(p, task.family, None))).correct
                for p in problems)
    n = len(problems)
    out = {"problems": n, "sentences": total, "grounded_sentences": grounded,
           "grounded_share": grounded / total if total else 0.0,
           "right_followed_to_the_end": right / n if n else 0.0,
           "core_alone": alone / n if n else 0.0}
    return {**out, "gate": passes(out)}


def passes(m: dict) -> bool:
    """The gate (docs/world.md): grounded share at least GROUNDED_SHARE, and right followed to the
    end at least as often as the core alone."""
    return m["grounded_share"] >= GROUNDED_SHARE and m["right_followed_to_the_end"] >= m["core_alone"]
