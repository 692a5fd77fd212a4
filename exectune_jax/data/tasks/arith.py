"""`arith`: GSM8K-style word problems generated offline, each with a known gold program.

A problem is a short story about one person's collection: a start sentence, a few events and
a question. Every event maps to one or two single arithmetic operations on quantities that
appear in the text or on earlier results, so the gold program is exact and its length is the
difficulty. The same event table generates the text and parses it back (`parse_problem`),
which is how the simulated core and teacher "read" a problem without hidden side channels.

Program format (``meta["program"]``): a list of ``[op, left, right]`` with op in
add/subtract/multiply/divide and operands ``"q<i>"`` (the i-th number in the text) or
``"r<j>"`` (the result of operation j, 0-based).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

from exectune_jax.data.tasks import register
from exectune_jax.data.tasks.answers import extract_answer, same_number
from exectune_jax.data.tasks.base import GeneratedSplits, Problem, Verdict

NAMES = (
    ("Maria", "she"), ("Tom", "he"), ("Aisha", "she"), ("Ben", "he"), ("Chen", "he"),
    ("Priya", "she"), ("Lucas", "he"), ("Sofia", "she"), ("Omar", "he"), ("Emma", "she"),
    ("Diego", "he"), ("Hana", "she"), ("Kofi", "he"), ("Lena", "she"), ("Ivan", "he"),
    ("Zara", "she"), ("Noah", "he"), ("Mei", "she"), ("Sam", "he"), ("Grace", "she"),
    ("Ravi", "he"), ("Nora", "she"), ("Jack", "he"), ("Yuki", "she"), ("Leo", "he"),
    ("Ana", "she"), ("Felix", "he"), ("Rosa", "she"), ("Ali", "he"), ("Julia", "she"),
)
ITEMS = (
    ("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("pencil", "pencils"),
    ("cookie", "cookies"), ("book", "books"), ("shell", "shells"), ("coin", "coins"),
    ("card", "cards"), ("stamp", "stamps"), ("button", "buttons"), ("crayon", "crayons"),
    ("cupcake", "cupcakes"), ("balloon", "balloons"), ("toy car", "toy cars"), ("bead", "beads"),
    ("muffin", "muffins"), ("egg", "eggs"), ("ribbon", "ribbons"), ("rock", "rocks"),
)
CONTAINERS = (
    ("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("jar", "jars"),
    ("crate", "crates"), ("basket", "baskets"), ("tin", "tins"), ("tray", "trays"),
)
PLACES = ("garden", "attic", "park", "garage", "classroom", "library", "kitchen", "yard")
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}

# Event kinds -> phrasings. Placeholders: {N} name, {P}/{p} pronoun, {o} object pronoun,
# {s} possessive, {F} a friend, {it}/{its} item, {c}/{cs} container, {pl} place, {a}/{b} numbers
# (always {a} before {b} in the text).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "start": (
        "{N} has {a} {its}.",
        "{N} owns {a} {its}.",
        "{N} collected {a} {its} last week.",
        "There are {a} {its} in {N}'s room.",
    ),
    "start2": (
        "{N} has {a} {cs} of {its} with {b} {its} in each {c}.",
        "{N} buys {a} {cs} of {its}, and each {c} holds {b} {its}.",
        "{N} starts with {a} {cs} that each contain {b} {its}.",
    ),
    "add": (
        "{P} buys {a} more {its}.",
        "{F} gives {o} {a} more {its}.",
        "{P} finds {a} {its} in the {pl}.",
        "Then {p} wins {a} {its} at a fair.",
        "{P} gets {a} more {its} as a gift.",
    ),
    "sub": (
        "{P} gives {a} {its} to {F}.",
        "{P} loses {a} {its} on the way home.",
        "Then {p} uses {a} {its} for a school project.",
        "{F} borrows {a} of the {its} and never returns them.",
    ),
    "mul": (
        "After a trade, {p} has {a} times as many {its} as before.",
        "By the end of the month, the number of {its} is {a} times as large.",
        "{P} then makes the pile {a} times bigger.",
    ),
    "div": (
        "{P} splits the {its} into {a} equal piles and keeps one pile.",
        "{P} shares the {its} equally among {a} friends, keeping one share.",
        "{P} divides the {its} into {a} equal {cs} and keeps only one {c}.",
    ),
    "addprod": (
        "{P} buys {a} {cs} of {its} with {b} {its} in each.",
        "{F} gives {o} {a} {cs} that each hold {b} {its}.",
        "Then {p} gets {a} more {cs} of {b} {its} each.",
    ),
    "subprod": (
        "{P} gives away {a} {cs} with {b} {its} in each.",
        "{P} sells {a} {cs} of {b} {its} each to {F}.",
        "{P} fills {a} {cs} with {b} {its} each and donates them.",
    ),
    "sell": (
        "{P} sells every {it} for ${a}.",
        "Each {it} can be sold for ${a}.",
        "{N} charges ${a} for each {it}.",
    ),
    "distract": (
        "{N} is {a} years old.",
        "The {pl} is {a} meters away from {s} home.",
        "It takes {N} {a} minutes to walk to the {pl}.",
    ),
    "ask": (
        "How many {its} does {N} have now?",
        "How many {its} does {N} end up with?",
        "How many {its} are left at the end?",
    ),
    "ask_money": (
        "How much money does {N} make?",
        "How many dollars does {N} get in total?",
    ),
}
EVENTS = ("add", "sub", "mul", "div", "addprod", "subprod")
OPS = ("add", "subtract", "multiply", "divide")
_WORDS = r"[A-Za-z' ]+?"


@dataclass(frozen=True)
class Program:
    """A gold program: ops as (op, left, right) with operands "q<i>" / "r<j>"."""

    ops: tuple[tuple[str, str, str], ...]
    quantities: tuple[int, ...]


class _Builder:
    """Accumulates quantities and ops as events are applied; shared by generation and parsing."""

    def __init__(self) -> None:
        self.quantities: list[int] = []
        self.ops: list[tuple[str, str, str]] = []
        self.running: str | None = None

    def _q(self, value: int) -> str:
        self.quantities.append(value)
        return f"q{len(self.quantities) - 1}"

    def _op(self, op: str, left: str, right: str) -> str:
        self.ops.append((op, left, right))
        return f"r{len(self.ops) - 1}"

    def apply(self, kind: str, nums: tuple[int, ...]) -> None:
        if kind == "start":
            self.running = self._q(nums[0])
        elif kind == "start2":
            self.running = self._op("multiply", self._q(nums[0]), self._q(nums[1]))
        elif kind in ("add", "sub", "mul", "div", "sell"):
            op = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide", "sell": "multiply"}[kind]
            self.running = self._op(op, self.running, self._q(nums[0]))
        elif kind in ("addprod", "subprod"):
            product = self._op("multiply", self._q(nums[0]), self._q(nums[1]))
            self.running = self._op("add" if kind == "addprod" else "subtract", self.running, product)
        elif kind == "distract":
            self._q(nums[0])

    def program(self) -> Program:
        return Program(tuple(self.ops), tuple(self.quantities))


def run_program(program: Program) -> list[Fraction]:
    """The result of every op in order (exact fractions)."""
    results: list[Fraction] = []
    for op, left, right in program.ops:
        results.append(apply_op(op, operand_value(left, program.quantities, results),
                                operand_value(right, program.quantities, results)))
    return results


def operand_value(ref: str, quantities: tuple[int, ...], results: list[Fraction]) -> Fraction:
    index = int(ref[1:])
    return Fraction(quantities[index]) if ref[0] == "q" else results[index]


def apply_op(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "add":
        return a + b
    if op == "subtract":
        return a - b
    if op == "multiply":
        return a * b
    if op == "divide":
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return a / b
    raise ValueError(f"unknown op {op!r}")


# ---------------------------------------------------------------- generation


def _fill(template: str, world: dict[str, str], nums: tuple[int, ...]) -> str:
    text = template.format(a=nums[0] if nums else "", b=nums[1] if len(nums) > 1 else "", **world)
    return text[0].upper() + text[1:]


def _world(rng: random.Random) -> dict[str, str]:
    (name, pronoun), (friend, _) = rng.sample(NAMES, 2)
    p, o, s = PRONOUNS[pronoun]
    it, its = rng.choice(ITEMS)
    c, cs = rng.choice(CONTAINERS)
    return dict(N=name, P=p.capitalize(), p=p, o=o, s=s, F=friend, it=it, its=its, c=c, cs=cs, pl=rng.choice(PLACES))


def _event_numbers(kind: str, value: int, rng: random.Random) -> tuple[int, ...] | None:
    """Numbers for one event that keep every intermediate a positive, modest integer."""
    if kind == "add":
        return (rng.randint(2, 30),)
    if kind == "sub":
        return (rng.randint(1, min(value - 2, 40)),) if value >= 4 else None
    if kind == "mul":
        choices = [f for f in range(2, 6) if value * f <= 3000]
        return (rng.choice(choices),) if choices else None
    if kind == "div":
        choices = [d for d in range(2, 10) if value % d == 0 and value // d >= 2]
        return (rng.choice(choices),) if choices else None
    if kind == "addprod":
        return (rng.randint(2, 6), rng.randint(2, 12))
    if kind == "subprod":
        pairs = [(a, b) for a in range(2, 7) for b in range(2, 13) if a * b <= value - 2]
        return rng.choice(pairs) if pairs else None
    raise ValueError(kind)


_EVENT_WEIGHTS = {"add": 1.0, "sub": 1.0, "mul": 0.6, "div": 0.7, "addprod": 0.8, "subprod": 0.6}


def generate(rng: random.Random, steps: int) -> tuple[str, Program]:
    """One problem whose gold program has exactly `steps` operations."""
    world = _world(rng)
    builder = _Builder()
    sentences: list[str] = []

    def emit(kind: str, nums: tuple[int, ...]) -> None:
        sentences.append(_fill(rng.choice(TEMPLATES[kind]), world, nums))
        builder.apply(kind, nums)

    if steps >= 2 and rng.random() < 0.35:
        emit("start2", (rng.randint(2, 9), rng.randint(3, 12)))
        value = builder.quantities[0] * builder.quantities[1]
    else:
        emit("start", (rng.randint(8, 60),))
        value = builder.quantities[0]
    sell = steps - len(builder.ops) >= 1 and rng.random() < 0.25
    distract_at = rng.randint(1, steps) if rng.random() < 0.25 else -1
    while len(builder.ops) < steps - sell:
        if len(sentences) == distract_at:
            emit("distract", (rng.randint(5, 80),))
        left = steps - sell - len(builder.ops)
        kinds = [k for k in EVENTS if left >= 2 or k not in ("addprod", "subprod")]
        kind = rng.choices(kinds, weights=[_EVENT_WEIGHTS[k] for k in kinds])[0]
        nums = _event_numbers(kind, value, rng)
        if nums is None:
            continue
        emit(kind, nums)
        value = int(run_program(builder.program())[-1])
    if sell:
        emit("sell", (rng.randint(2, 9),))
    sentences.append(_fill(rng.choice(TEMPLATES["ask_money" if sell else "ask"]), world, ()))
    return " ".join(sentences), builder.program()


# ---------------------------------------------------------------- parsing


@cache
def _patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for kind, phrasings in TEMPLATES.items():
        for template in phrasings:
            parts = re.split(r"(\{\w+\})", template)
            regex = "".join(
                r"(\d+)" if p in ("{a}", "{b}") else _WORDS if p.startswith("{") else re.escape(p)
                for p in parts
            )
            out.append((kind, re.compile(regex, re.IGNORECASE)))
    return tuple(out)


_SENTENCE = re.compile(r"(?<=[.?!])\s+")


def parse_problem(text: str) -> Program | None:
    """Recover the gold program from an arith problem text; None when it is not one of ours."""
    sentences = _SENTENCE.split(text.strip())
    builder = _Builder()
    for i, sentence in enumerate(sentences):
        if i == 0:
            allowed = ("start", "start2")
        elif i == len(sentences) - 1:
            allowed = ("ask", "ask_money")
        else:
            allowed = (*EVENTS, "distract", "sell")
        match = _match(sentence, allowed)
        if match is None:
            return None
        builder.apply(*match)
    return builder.program() if builder.ops else None


def _match(sentence: str, allowed: tuple[str, ...]) -> tuple[str, tuple[int, ...]] | None:
    for kind, pattern in _patterns():
        if kind in allowed:
            m = pattern.fullmatch(sentence)
            if m:
                return kind, tuple(int(g) for g in m.groups())
    return None


def draw(rng: random.Random, steps: int, split: str) -> tuple[str, Problem]:
    """One generated problem of `steps` operations: (its text, the problem, id set by the split)."""
    text, program = generate(rng, steps)
    answer = run_program(program)[-1]
    return text, Problem(
        id="", prompt=text, answer=str(int(answer)), split=split,
        meta={"program": [list(op) for op in program.ops], "steps": len(program.ops),
              "quantities": list(program.quantities)},
    )


# ---------------------------------------------------------------- the task


class ArithTask:
    """Seeded splits of generated problems (`GeneratedSplits`), difficulty spread evenly over the
    step range. The validation split (500 by default) is where the world's parameters and the
    run sizes are chosen; the test split is for the eval stage only.
    """

    family = "math"

    def __init__(self, seed: int = 0, n_train: int = 2000, n_validation: int = 500, n_test: int = 300,
                 min_steps: int = 2, max_steps: int = 7, name: str = "arith") -> None:
        self.name = name
        self.seed = seed
        self.splits = GeneratedSplits(
            "arith", draw, seed, {"train": n_train, "validation": n_validation, "test": n_test},
            min_steps, max_steps, steps_range=(1, 12))

    def problems(self, split: str) -> list[Problem]:
        return self.splits.problems(split)

    def check(self, problem: Problem, text: str) -> Verdict:
        return check_number(problem, text)


def check_number(problem: Problem, text: str) -> Verdict:
    """Numeric verdict shared by the math tasks."""
    found = extract_answer(text or "")
    if found is None:
        return Verdict(False, None, "no answer found")
    if same_number(found, problem.answer):
        return Verdict(True, found, "")
    return Verdict(False, found, f"wrong answer {found} != {problem.answer}")


@register("arith")
def make(**options) -> ArithTask:
    return ArithTask(**options)
