"""What every task shares: the problem and verdict records, the `Task` protocol, JSONL rows.

A task turns a data source into `Problem`s and judges a model's reply with `check`. Data files
are user input, so reading them reports the exact file, line and field that is wrong.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from exectune_jax import io
from exectune_jax.errors import UserError

SPLITS = ("train", "validation", "test")
TEST_READER = "eval"  # the one stage that may read a test split


class DataError(UserError):
    """A data file or task option a user can fix; the message names where and what to do."""


@dataclass(frozen=True)
class Problem:
    """One problem. `meta` holds task-specific facts (gold program, tests, reference code)."""

    id: str
    prompt: str
    answer: str
    split: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The check of one reply: `reason` is "" when correct, else why it is not."""

    correct: bool
    extracted: str | None
    reason: str


@runtime_checkable
class Task(Protocol):
    name: str
    family: str  # "math" | "code"

    def problems(self, split: str) -> list[Problem]: ...

    def check(self, problem: Problem, text: str) -> Verdict: ...


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


# Draws one problem of `steps` operations for `split` from `rng`: (its prompt, the problem).
Draw = Callable[[random.Random, int, str], tuple[str, Problem]]


class GeneratedSplits:
    """Seeded splits of generated problems, difficulty spread evenly over the step range.

    Splits are generated test first, then validation, then train, each from its own seed and
    skipping prompts already used, so the three share no problem and the evaluation splits do
    not move when `n_train` changes. `generator` names the generator in the seeds and the ids.
    """

    def __init__(self, generator: str, draw: Draw, seed: int, sizes: Mapping[str, int],
                 min_steps: int, max_steps: int, steps_range: tuple[int, int]) -> None:
        for split, value in sizes.items():
            if not isinstance(value, int) or value < 0:
                raise DataError(f"task option n_{split}={value!r}: must be a whole number >= 0")
        low, high = steps_range
        if not (isinstance(min_steps, int) and isinstance(max_steps, int)
                and low <= min_steps <= max_steps <= high):
            raise DataError(f"task options min_steps={min_steps!r}, max_steps={max_steps!r}: "
                            f"need {low} <= min_steps <= max_steps <= {high}")
        self.generator, self.draw, self.seed, self.sizes = generator, draw, seed, dict(sizes)
        self.levels = tuple(range(min_steps, max_steps + 1))
        self._splits: dict[str, list[Problem]] = {}
        self._seen: set[str] = set()

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        for name in ("test", "validation", "train"):
            if name not in self._splits:
                self._splits[name] = self._generate(name)
            if name == split:
                break
        return list(self._splits[split])

    def _generate(self, split: str) -> list[Problem]:
        rng = random.Random(f"{self.generator}/{self.seed}/{split}")
        out: list[Problem] = []
        while len(out) < self.sizes[split]:
            text, problem = self.draw(rng, self.levels[len(out) % len(self.levels)], split)
            if text in self._seen:
                continue
            self._seen.add(text)
            out.append(problem)
        rng.shuffle(out)
        return [dataclasses.replace(p, id=f"{self.generator}-{split}-{i:05d}") for i, p in enumerate(out)]


# The stage this process runs (a process runs one stage at a time; threads share it) and every
# split handed out in this process, as (stage, task, split).
_stage: str | None = None
_reads: list[tuple[str | None, str, str]] = []


@contextmanager
def reading_as(stage: str):
    """Run a stage: inside, tasks hand the test split to the eval stage only."""
    global _stage
    outer, _stage = _stage, stage
    try:
        yield
    finally:
        _stage = outer


def note_read(task: str, split: str) -> None:
    """Record that `split` of `task` is read; refuse the test split to a stage other than eval.

    Outside any stage (a library user, a notebook) every split is open: the guard is on the
    pipeline, whose settings must be chosen on the validation split.
    """
    if split == "test" and _stage not in (None, TEST_READER):
        raise DataError(
            f"stage {_stage!r} asked for the test split of task {task!r}; only the {TEST_READER} "
            f"stage reads it (choose settings on the validation split)"
        )
    _reads.append((_stage, task, split))


def reads() -> list[tuple[str | None, str, str]]:
    """Every (stage, task, split) handed out in this process so far, in order."""
    return list(_reads)


def read_jsonl(path: str | Path, required: Mapping[str, type | tuple[type, ...]]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row) for each non-blank line of a JSONL file (plain or .gz), validating
    the `required` fields.

    Errors name the file, the 1-based line and the field, so a bad row in a large file is
    found without bisecting it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass the path of an existing JSONL file")
    for line_no, row in io.read_jsonl(path, appended=False, error=DataError,
                                      hint="each line must be one JSON object"):
        yield line_no, require(row, f"{path}:{line_no}", required)


def require(row: Any, where: str, required: Mapping[str, type | tuple[type, ...]]) -> dict:
    """`row` when it is a JSON object with each `required` field of its type; else DataError
    naming `where` and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, types in required.items():
        if name not in row:
            raise DataError(f"{where}: field {name!r} is missing; add it to every row")
        if not isinstance(row[name], types) or isinstance(row[name], bool) and bool not in _as_tuple(types):
            raise DataError(f"{where}: field {name!r} must be {_type_names(types)}, got {type(row[name]).__name__}")
    return row


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))
