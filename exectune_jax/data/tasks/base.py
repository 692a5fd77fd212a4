"""What every task shares: the problem and verdict records, the `Task` protocol, JSONL rows.

A task turns a data source into `Problem`s and judges a model's reply with `check`. Data files
are user input, so reading them reports the exact file, line and field that is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
    """Yield (line number, row) for each non-blank line, validating the `required` fields.

    Errors name the file, the 1-based line and the field, so a bad row in a large file is
    found without bisecting it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass the path of an existing JSONL file")
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{line_no}: not valid JSON ({e.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            for name, types in required.items():
                if name not in row:
                    raise DataError(f"{path}:{line_no}: field {name!r} is missing; add it to every row")
                if not isinstance(row[name], types) or isinstance(row[name], bool) and bool not in _as_tuple(types):
                    raise DataError(
                        f"{path}:{line_no}: field {name!r} must be {_type_names(types)}, "
                        f"got {type(row[name]).__name__}"
                    )
            yield line_no, row


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))
