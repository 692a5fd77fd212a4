"""`funcs`: small Python functions generated offline, each with a known gold program and hidden tests.

A problem is a function to write: a signature and a docstring that describes, one sentence per
operation, what the function does to its input (a list of integers or a string), then one
example. The gold program is a short pipeline of operations from `OPS` (filters, maps, sorts,
slices, then one that returns the result); its length is the difficulty. The same table
generates the docstring and parses it back (`parse_problem`), which is how the simulated core
and teacher "read" a problem without hidden side channels, as for `arith`.

Every operation is one line of Python on the input's variable (`OPS[name].code`), so the
reference solution is those lines; its outputs on the hidden test inputs are computed from
those lines here, and a reply is judged by running its code against the tests in the sandbox
(`code.CodeTask.check`). Each operation also has one plausible mistake (`OPS[name].mistake`):
the line a careless coder writes instead, which the simulated core writes where its own code
goes wrong.

Program format (``meta["program"]``): a list of ``[op, k]`` with `k` the operation's number
(None for operations without one).
"""

from __future__ import annotations

import random
import re
import textwrap
from dataclasses import dataclass
from functools import cache
from typing import Any

from exectune_jax.data.tasks import register
from exectune_jax.data.tasks.base import DataError, GeneratedSplits, Problem
from exectune_jax.data.tasks.code import CodeTask, complete_function


@dataclass(frozen=True)
class Op:
    """One operation: its domain, whether it returns, its docstring sentences, its line of code
    and the plausible mistake in its place. `{k}` is the operation's number, `{v}` the variable."""

    domain: str  # "nums" (list[int] in) | "text" (str in)
    returns: str | None  # the return type for a returning operation, None for one that transforms
    doc: tuple[str, ...]
    code: str
    mistake: str
    k: tuple[int, int] | None = None  # the range of its number; None: it has none


OPS: dict[str, Op] = {
    "keep_even": Op("nums", None, ("Odd numbers are thrown away.", "Only the even numbers are kept."),
                    "{v} = [x for x in {v} if x % 2 == 0]", "{v} = [x for x in {v} if x % 2 == 1]"),
    "keep_odd": Op("nums", None, ("Even numbers are thrown away.", "Only the odd numbers are kept."),
                   "{v} = [x for x in {v} if x % 2 != 0]", "{v} = [x for x in {v} if x % 2 == 0]"),
    "keep_gt": Op("nums", None, ("Numbers that are not above {k} are dropped.", "Only values larger than {k} stay."),
                  "{v} = [x for x in {v} if x > {k}]", "{v} = [x for x in {v} if x >= {k}]", (0, 9)),
    "keep_lt": Op("nums", None, ("Numbers of {k} or more are dropped.", "Only values smaller than {k} stay."),
                  "{v} = [x for x in {v} if x < {k}]", "{v} = [x for x in {v} if x <= {k}]", (2, 12)),
    "add_each": Op("nums", None, ("Every value is raised by {k}.", "Each value grows by {k}."),
                   "{v} = [x + {k} for x in {v}]", "{v} = [x - {k} for x in {v}]", (1, 9)),
    "mul_each": Op("nums", None, ("Every value is scaled by {k}.", "Each value becomes {k} times as large."),
                   "{v} = [x * {k} for x in {v}]", "{v} = [x * {k} for x in {v} if x]", (2, 5)),
    "square": Op("nums", None, ("Every value is replaced by its square.", "Each value is squared."),
                 "{v} = [x * x for x in {v}]", "{v} = [x * 2 for x in {v}]"),
    "sort_asc": Op("nums", None, ("The values are put in increasing order.", "The list is sorted from small to large."),
                   "{v} = sorted({v})", "{v} = sorted(set({v}))"),
    "sort_desc": Op("nums", None, ("The values are put in decreasing order.", "The list is sorted from large to small."),
                    "{v} = sorted({v}, reverse=True)", "{v} = sorted(set({v}), reverse=True)"),
    "reverse": Op("nums", None, ("The order of the values is reversed.", "The list is turned back to front."),
                  "{v} = {v}[::-1]", "{v} = sorted({v}, key=lambda x: -x)"),
    "take": Op("nums", None, ("Only the first {k} values stay.", "Everything after the first {k} values is cut off."),
               "{v} = {v}[:{k}]", "{v} = {v}[:{k} - 1]", (2, 5)),
    "drop": Op("nums", None, ("The first {k} values are skipped.", "The first {k} values are removed."),
               "{v} = {v}[{k}:]", "{v} = {v}[{k} + 1:]", (1, 3)),
    "dedup": Op("nums", None, ("Repeated values are removed, keeping the first of each.",
                               "Duplicates are dropped, keeping first appearances."),
                "{v} = list(dict.fromkeys({v}))", "{v} = list(set({v}))"),
    "sum": Op("nums", "int", ("The result is the total of the values.", "It gives back the sum of what is left."),
              "return sum({v})", "return sum({v}[1:])"),
    "count": Op("nums", "int", ("The result is how many values are left.", "It gives back the count of the values."),
                "return len({v})", "return len({v}) - 1"),
    "max": Op("nums", "int", ("The result is the largest value, or 0 for an empty list.",
                              "It gives back the maximum, or 0 when nothing is left."),
              "return max({v}, default=0)", "return {v}[-1] if {v} else 0"),
    "min": Op("nums", "int", ("The result is the smallest value, or 0 for an empty list.",
                              "It gives back the minimum, or 0 when nothing is left."),
              "return min({v}, default=0)", "return {v}[0] if {v} else 0"),
    "ret_list": Op("nums", "list[int]", ("The result is the list itself.", "It gives back the values that are left."),
                   "return {v}", "return sorted({v})"),
    "lower": Op("text", None, ("All letters are made lowercase.", "The text is turned into lower case."),
                "{v} = {v}.lower()", "{v} = {v}.capitalize()"),
    "upper": Op("text", None, ("All letters are made uppercase.", "The text is turned into upper case."),
                "{v} = {v}.upper()", "{v} = {v}.title()"),
    "strip_vowels": Op("text", None, ("Every vowel of either case is deleted.", "Vowels of either case are removed."),
                       "{v} = ''.join(c for c in {v} if c.lower() not in 'aeiou')",
                       "{v} = ''.join(c for c in {v} if c not in 'aeiou')"),
    "underscores": Op("text", None, ("Spaces become underscores.", "Each space is replaced by an underscore."),
                      "{v} = {v}.replace(' ', '_')", "{v} = {v}.replace(' ', '')"),
    "reverse_text": Op("text", None, ("The text is reversed character by character.",
                                      "The characters are put in reverse order."),
                       "{v} = {v}[::-1]", "{v} = ' '.join({v}.split()[::-1])"),
    "letters": Op("text", None, ("Everything that is not a letter is removed.", "Only the letters are kept."),
                  "{v} = ''.join(c for c in {v} if c.isalpha())", "{v} = ''.join(c for c in {v} if c.isalnum())"),
    "take_chars": Op("text", None, ("Only the first {k} characters stay.", "The text is cut to its first {k} characters."),
                     "{v} = {v}[:{k}]", "{v} = {v}[:{k} - 1]", (3, 9)),
    "vowels": Op("text", "int", ("The result is the number of vowels of either case.",
                                 "It gives back how many vowels of either case there are."),
                 "return sum(c in 'aeiouAEIOU' for c in {v})", "return sum(c in 'aeiou' for c in {v})"),
    "length": Op("text", "int", ("The result is the number of characters.", "It gives back the length of the text."),
                 "return len({v})", "return len({v}) - {v}.count(' ')"),
    "words": Op("text", "int", ("The result is the number of words.", "It gives back how many words there are."),
                "return len({v}.split())", "return {v}.count(' ') + 1"),
    "ret_text": Op("text", "str", ("The result is the text itself.", "It gives back the text."),
                   "return {v}", "return {v}.strip()"),
}
DOMAINS = {"nums": ("nums", "list[int]"), "text": ("text", "str")}  # domain -> (variable, input type)
FUNCTION_NAMES = ("solve", "transform", "process", "compute", "tally", "clean", "reshape", "digest")
_WORDS = ("apple", "Tree", "hello", "World", "data", "Ocean", "cat", "IDEA", "blue", "x2", "42", "Umbra")

Step = tuple[str, int | None]  # (operation, its number)


@dataclass(frozen=True)
class Program:
    """A gold program: the function's name, its domain and its operations in order."""

    name: str
    domain: str
    ops: tuple[Step, ...]

    @property
    def variable(self) -> str:
        return DOMAINS[self.domain][0]

    @property
    def returns(self) -> str:
        return OPS[self.ops[-1][0]].returns or DOMAINS[self.domain][1]


def line(step: Step, variable: str, mistaken: bool = False) -> str:
    """The line of code of one operation (its plausible mistake with `mistaken`)."""
    op = OPS[step[0]]
    return (op.mistake if mistaken else op.code).format(v=variable, k=step[1])


def signature(program: Program) -> str:
    variable, kind = DOMAINS[program.domain]
    return f"def {program.name}({variable}: {kind}) -> {program.returns}:"


def body(program: Program, mistaken: frozenset[int] = frozenset()) -> list[str]:
    """The function's lines (the operations at indices `mistaken` written with their mistake);
    a program whose last operation does not return gets a final `return`."""
    lines = [line(s, program.variable, i in mistaken) for i, s in enumerate(program.ops)]
    if not lines or not lines[-1].startswith("return"):
        lines.append(f"return {program.variable}")
    return lines


def function(program: Program, lines: list[str]) -> str:
    return "\n".join([signature(program), *(f"    {x}" for x in lines)])


def outputs(program: Program, lines: list[str], inputs: list[Any]) -> list[Any]:
    """The function's result on each input, run here: only for lines this module wrote (the
    reference, its mistakes), never for a reply, which runs in the sandbox. An exception counts
    as a result of its own kind."""
    namespace: dict[str, Any] = {}
    exec(compile(function(program, lines), "<funcs>", "exec"), namespace)  # noqa: S102 - our own lines
    out = []
    for value in inputs:
        try:
            out.append(namespace[program.name](value))
        except Exception as e:  # noqa: BLE001 - a mistake's line may fail in any way the reference does not
            out.append(type(e))
    return out


def inputs_for(domain: str, rng: random.Random, n: int) -> list[Any]:
    """`n` inputs that exercise the operations' edge cases: an empty input first, then zeros,
    negatives and repeats in lists, and mixed case, digits and spaces in texts."""
    if domain == "nums":
        return [[]] + [[rng.randint(-4, 15) for _ in range(rng.randint(3, 9))] for _ in range(n - 1)]
    texts = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5))) for _ in range(n - 1)]
    return [""] + [f" {t}" if i % 3 == 1 else t for i, t in enumerate(texts)]


# ---------------------------------------------------------------- generation


def generate(rng: random.Random, steps: int, n_tests: int) -> tuple[Program, list[Any], Any]:
    """(program with exactly `steps` operations, hidden test inputs, the example's input)."""
    while True:
        domain = rng.choice(tuple(DOMAINS))
        transforms = [n for n, op in OPS.items() if op.domain == domain and op.returns is None]
        finals = [n for n, op in OPS.items() if op.domain == domain and op.returns is not None]
        chosen: list[str] = []
        while len(chosen) < steps - 1:
            name = rng.choice(transforms)
            if name not in chosen[-1:]:
                chosen.append(name)
        chosen.append(rng.choice(finals))
        ops = tuple((n, rng.randint(*OPS[n].k) if OPS[n].k else None) for n in chosen)
        program = Program(rng.choice(FUNCTION_NAMES), domain, ops)
        tests = inputs_for(domain, rng, n_tests)
        example = inputs_for(domain, rng, 2)[1]
        results = outputs(program, body(program), tests)
        # a function whose tests mostly share one result would pass many wrong replies
        if len({repr(r) for r in results}) > n_tests // 2 and not any(isinstance(r, type) for r in results):
            return program, tests, example


def prompt_of(program: Program, rng: random.Random, example: Any) -> str:
    sentences = " ".join(rng.choice(OPS[n].doc).format(k=k) for n, k in program.ops)
    doc = textwrap.fill(sentences, width=96, initial_indent="    \"\"\"", subsequent_indent="    ")
    expected = outputs(program, body(program), [example])[0]
    return (f"{signature(program)}\n{doc}\n\n"
            f"    >>> {program.name}({example!r})\n    {expected!r}\n    \"\"\"\n")


def tests_of(program: Program, inputs: list[Any]) -> str:
    expected = outputs(program, body(program), inputs)
    return "".join(f"assert {program.name}({x!r}) == {y!r}\n" for x, y in zip(inputs, expected))


# ---------------------------------------------------------------- parsing


@cache
def _patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((name, re.compile(re.escape(doc).replace(r"\{k\}", r"(\d+)")))
                 for name, op in OPS.items() for doc in op.doc)


_SIGNATURE = re.compile(r"^def (\w+)\((nums|text): (?:list\[int\]|str)\) -> [\w\[\]]+:\n\s*\"\"\"(.*?)\n\n",
                        re.DOTALL)
_SENTENCE = re.compile(r"(?<=\.)\s+")


def parse_problem(text: str) -> Program | None:
    """Recover the gold program from a funcs problem text; None when it is not one of ours."""
    m = _SIGNATURE.match(text.strip())
    if m is None:
        return None
    name, variable, doc = m.groups()
    doc = " ".join(doc.split())
    domain = next(d for d, (v, _) in DOMAINS.items() if v == variable)
    ops = []
    for sentence in _SENTENCE.split(doc.strip()):
        found = next(((n, p.fullmatch(sentence)) for n, p in _patterns() if p.fullmatch(sentence)), None)
        if found is None or OPS[found[0]].domain != domain:
            return None
        n, match = found
        ops.append((n, int(match.group(1)) if match.groups() else None))
    return Program(name, domain, tuple(ops)) if ops else None


def program_of(problem: Problem) -> Program:
    """The gold program a problem's meta records."""
    return Program(problem.meta["entry_point"], problem.meta["domain"],
                   tuple((n, k) for n, k in problem.meta["program"]))


# ---------------------------------------------------------------- the task


class FuncsTask(CodeTask):
    """Seeded splits of generated functions, difficulty spread evenly over the step range.

    As for `arith`: test first, then validation, then train, each from its own seed and skipping
    prompts already used, so the splits share no problem and the evaluation splits do not move
    when `n_train` changes. Options beyond arith's: `n_tests` hidden tests per problem, and the
    code tasks' `timeout_s` and `memory_mb` for each sandboxed check.
    """

    def __init__(self, seed: int = 0, n_train: int = 2000, n_validation: int = 500, n_test: int = 300,
                 min_steps: int = 2, max_steps: int = 6, n_tests: int = 8, name: str = "funcs", **limits) -> None:
        super().__init__(**limits)
        if not (isinstance(n_tests, int) and 3 <= n_tests <= 50):
            raise DataError(f"task option n_tests={n_tests!r}: must be a whole number in [3, 50]")
        self.name, self.seed, self.n_tests = name, seed, n_tests
        self.splits = GeneratedSplits(
            "funcs", self.draw, seed, {"train": n_train, "validation": n_validation, "test": n_test},
            min_steps, max_steps, steps_range=(2, 8))

    def problems(self, split: str) -> list[Problem]:
        return self.splits.problems(split)

    def draw(self, rng: random.Random, steps: int, split: str) -> tuple[str, Problem]:
        """One generated function of `steps` operations: (its prompt, the problem)."""
        program, tests, example = generate(rng, steps, self.n_tests)
        text = prompt_of(program, rng, example)
        solution = "\n".join(f"    {x}" for x in body(program)) + "\n"
        return text, Problem(
            id="", prompt=text, answer=solution, split=split,
            meta={"entry_point": program.name, "domain": program.domain, "steps": len(program.ops),
                  "program": [list(s) for s in program.ops], "tests": tests_of(program, tests),
                  "solution": solution},
        )

    def test_program(self, problem: Problem, code: str) -> tuple[str, dict[str, str]]:
        module = complete_function(problem.prompt, code, problem.meta["entry_point"])
        return f"{module}\n\n{problem.meta['tests']}", {}


@register("funcs")
def make(**options) -> FuncsTask:
    return FuncsTask(**options)
