"""How the simulated core reads a code strategy and how far it carries it out (graded following).

The step language. Each operation of a `funcs` problem has one imperative step ("Keep only the
even numbers.", "Add 3 to each number.", "Return the sum of the numbers.") that the simulated
teacher writes and the core maps to one line of code. Reading a step or a sentence of advice,
the core finds the steps it names, imperative or in prose ("adding 3 to each number"), with the
operation's number written out or as a vague reference ("the given amount": the core must look
the number up in the docstring). A step that holds lines of Python instead (the solution's own
code) is read line by line.

A step is one of the arith kinds (`sim/follow.py`), with the follow probabilities of
`WorldSpec.code_follow`:

    atomic    exactly one step in the step language, or lines of code   code_follow atomic
    prose     one step named inside a longer sentence                   code_follow prose
    compound  two steps in one ("..., then add 3 to each number")       code_follow compound
    verbose   more than `max_step_words` words                          code_follow verbose
    vague     the number is a vague reference                           code_follow vague

A step of several kinds gets the lowest of their probabilities. It cannot be carried out when it
names a number that is not in the problem, a vague reference the docstring does not resolve,
three or more steps, or, in a strategy block, nothing the core can write; a sentence of advice
naming nothing is commentary. Which step is carried out is decided as for arith, by a stable
hash of the execution (`core.follow_draw`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from exectune_jax.data.tasks.funcs import OPS, Program, Step
from exectune_jax.sim import follow
from exectune_jax.world import WorldSpec

# operation -> (verb, the rest of its step); "{k}" is its number
STEPS: dict[str, tuple[str, str]] = {
    "keep_even": ("keep", "only the even numbers"), "keep_odd": ("keep", "only the odd numbers"),
    "keep_gt": ("keep", "only the numbers greater than {k}"), "keep_lt": ("keep", "only the numbers less than {k}"),
    "add_each": ("add", "{k} to each number"), "mul_each": ("multiply", "each number by {k}"),
    "square": ("square", "each number"), "sort_asc": ("sort", "the numbers in ascending order"),
    "sort_desc": ("sort", "the numbers in descending order"), "reverse": ("reverse", "the order of the numbers"),
    "take": ("keep", "only the first {k} numbers"), "drop": ("drop", "the first {k} numbers"),
    "dedup": ("remove", "repeated numbers, keeping the first of each"), "sum": ("return", "the sum of the numbers"),
    "count": ("return", "how many numbers are left"), "max": ("return", "the largest number, or 0 if none"),
    "min": ("return", "the smallest number, or 0 if none"), "ret_list": ("return", "the numbers"),
    "lower": ("make", "the text lowercase"), "upper": ("make", "the text uppercase"),
    "strip_vowels": ("remove", "every vowel of either case"),
    "underscores": ("replace", "each space with an underscore"), "reverse_text": ("reverse", "the text"),
    "letters": ("keep", "only the letters"), "take_chars": ("keep", "only the first {k} characters"),
    "vowels": ("return", "the number of vowels of either case"), "length": ("return", "the length of the text"),
    "words": ("return", "the number of words"), "ret_text": ("return", "the text"),
}
_GERUND = {"keep": "keeping", "add": "adding", "multiply": "multiplying", "square": "squaring", "sort": "sorting",
           "reverse": "reversing", "drop": "dropping", "remove": "removing", "return": "returning",
           "make": "making", "replace": "replacing"}
VAGUE = ("the given amount", "that amount", "the number given", "the limit")
_NUMBER = r"(\d+|" + "|".join(re.escape(v) for v in VAGUE) + r")"


def render_step(step: Step, vague: bool = False) -> str:
    """The atomic step of one operation (its number as a vague reference with `vague`)."""
    verb, rest = STEPS[step[0]]
    return f"{verb.capitalize()} {rest.format(k=VAGUE[0] if vague else step[1])}."


@dataclass(frozen=True)
class Named:
    """One step a sentence names: the operation, its number as written, and where it is."""

    op: str
    number: str | None
    start: int
    end: int


@cache
def _phrases() -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for name, (verb, rest) in STEPS.items():
        pattern = re.escape(rest).replace(r"\{k\}", _NUMBER)
        out.append((name, re.compile(rf"\b(?:{verb}|{_GERUND[verb]}) {pattern}(?!\w)", re.IGNORECASE)))
    return tuple(out)


def phrases(text: str, domain: str) -> list[Named]:
    """The steps a sentence names, in order of appearance (a step whose phrase lies inside a
    longer one's, such as "return the text" in "return the length of the text", is not named)."""
    found = sorted((Named(n, m.group(1) if m.groups() else None, m.start(), m.end())
                    for n, p in _phrases() if OPS[n].domain == domain for m in p.finditer(text)),
                   key=lambda f: (f.start, -f.end))
    out: list[Named] = []
    for f in found:
        if not out or f.start >= out[-1].end:
            out.append(f)
    return out


@cache
def _lines(domain: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for name, op in OPS.items():
        if op.domain == domain:
            for template in (op.code, op.mistake):
                pattern = re.escape(template).replace(r"\{v\}", r"\w+").replace(r"\{k\}", r"(-?\d+)")
                out.append((name, re.compile(pattern)))
    return tuple(out)


def code_op(text: str, domain: str) -> Step | None:
    """The operation a line of code carries out (its right line or its mistake), or None."""
    body = re.sub(r"\s+#.*$", "", text.strip()).rstrip(";").strip()
    for name, pattern in _lines(domain):
        m = pattern.fullmatch(body)
        if m:
            return name, int(m.group(1)) if m.groups() else None
    return None


def code_ops(text: str, domain: str) -> list[Step | None]:
    """The operations of the lines of a code block or a step of code ("; " separates lines),
    skipping the signature, blank lines and comments; None for a line that is none of them."""
    lines = [x for part in text.splitlines() for x in part.split("; ")]
    return [code_op(x, domain) for x in lines
            if x.strip() and not x.strip().startswith(("#", "def ", '"""', "'''", "```"))]


@dataclass(frozen=True)
class Execution:
    done: tuple[Step, ...]  # the operations the core wrote, in order
    stopped: int | None  # the step it did not carry out; None: it followed every step
    reason: str

    @property
    def followed_all(self) -> bool:
        return self.stopped is None


def named(body: str, domain: str) -> tuple[list[Named], bool]:
    """(the steps a sentence names, whether it names them as lines of code)."""
    found = phrases(body, domain)
    if found:
        return found, False
    ops = code_ops(body, domain)
    if ops and all(o is not None for o in ops):
        return [Named(n, None if k is None else str(k), 0, len(body)) for n, k in ops], True
    return [], False


def kinds(body: str, found: list[Named], code: bool, world: WorldSpec) -> set[str]:
    """The kinds of a sentence that names one or more steps (see the module docstring)."""
    if code:
        return {"atomic"}
    whole = (found[0].start, found[0].end) == (0, len(body))
    out = {"compound"} if len(found) == 2 else {"atomic"} if whole else {"prose"}
    if len(body.split()) > world.max_step_words:
        out.add("verbose")
    if any(f.number is not None and not f.number.isdigit() for f in found):
        out.add("vague")
    return out


def probability(kinds: set[str], world: WorldSpec) -> float:
    rates = dict(world.code_follow)
    return min(rates[k] for k in kinds)


def resolve(step: Named, program: Program | None, known: frozenset[str] | None) -> Step | None:
    """The operation with its number: as written when the problem shows it (any number where
    `known` is None), looked up in the docstring for a vague reference; None when the core
    cannot know it."""
    if step.number is None:
        return step.op, None
    if step.number.isdigit():
        return (step.op, int(step.number)) if known is None or step.number in known else None
    given = [k for n, k in (program.ops if program else ()) if n == step.op]
    return (step.op, given[0]) if given else None


def execute(text: str, domain: str, program: Program | None, known: frozenset[str], world: WorldSpec,
            carried_out: Callable[[int, float], bool]) -> Execution:
    """Carry out `text` step by step; `carried_out(i, p)` decides step i of probability p."""
    steps, block, why = follow.sentences_of(text)
    if steps is None:
        return Execution((), 0, why)
    done: list[Step] = []
    for i, sentence in enumerate(steps):
        body = sentence.strip().rstrip(".").strip()
        found, code = named(body, domain)
        if not found:
            if block:
                return Execution(tuple(done), i, f"step {i + 1} names nothing to write")
            continue
        if len(found) > 2 and not code:
            return Execution(tuple(done), i, f"step {i + 1} names more than two steps")
        ops = [resolve(f, program, known) for f in found]
        if any(o is None for o in ops):
            return Execution(tuple(done), i, f"step {i + 1} uses a number the problem does not give")
        if not carried_out(i, probability(kinds(body, found, code, world), world)):
            return Execution(tuple(done), i, f"step {i + 1} is not one it can carry out")
        done += ops
    if not done:
        return Execution((), 0, "it names nothing to write")
    return Execution(tuple(done), None, "")


def strategy_ops(text: str, program: Program) -> tuple[list[Step] | None, str]:
    """Every operation a strategy names, in order, as the judge reads it; None and why when a
    step names nothing or what it names cannot be known."""
    steps, block, why = follow.sentences_of(text)
    if steps is None:
        return None, f"the strategy has no steps the response could carry out ({why})"
    out: list[Step] = []
    for i, sentence in enumerate(steps):
        found, _ = named(sentence.strip().rstrip(".").strip(), program.domain)
        if not found and block:
            return None, f"step {i + 1} names nothing the response could write"
        for f in found:
            op = resolve(f, program, None)
            if op is None:
                return None, f"step {i + 1} names a number the problem does not give"
            out.append(op)
    return out, ""
