"""`mbpp`: Mostly Basic Python Problems, from local JSONL or, when online, the hub.

Rows (the original `mbpp.jsonl` fields): `task_id` (int), `text` (the task; `prompt` in the
sanitized release), `code` (a reference solution), `test_list` (assert statements, as strings),
`test_setup_code` (optional; the sanitized release has `test_imports`, a list, instead).

Options: `path` is either the one MBPP file, split by `task_id` as in the MBPP paper (11-510
test, 511-600 validation, 601-974 train, and the few-shot examples 1-10 in train), or a
directory holding `train.jsonl`, `validation.jsonl` and `test.jsonl`; or `hf_id` (e.g.
google-research-datasets/mbpp) with `hf_config` "full" or "sanitized", using the hub's splits.
The prompt shows the asserts, as the MBPP paper does, so the reply knows the function's name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from exectune_jax.data.tasks import register
from exectune_jax.data.tasks.base import DataError, Problem, check_split
from exectune_jax.data.tasks.code import CodeTask, Rows, hub_rows, local_rows, string_list

REQUIRED = {"task_id": int, "code": str}


def split_of(task_id: int) -> str:
    """The MBPP paper's split of a task id."""
    if 11 <= task_id <= 510:
        return "test"
    if 511 <= task_id <= 600:
        return "validation"
    return "train"  # 601-974, and the few-shot examples 1-10


def entry_point(code: str, tests: list[str]) -> str | None:
    """The reference's top-level function that the asserts call (the first one, in code order)."""
    try:
        names = [n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    except SyntaxError:
        names = re.findall(r"^def\s+(\w+)", code, re.MULTILINE)
    text = "\n".join(tests)
    return next((name for name in names if re.search(rf"\b{re.escape(name)}\s*\(", text)), None)


def to_problem(row: dict, where: str, split: str) -> Problem:
    text = row.get("text", row.get("prompt"))
    if not isinstance(text, str):
        raise DataError(f"{where}: field 'text' (or 'prompt') must be a string with the task, got {type(text).__name__}")
    tests = string_list(row, where, "test_list")
    if not tests:
        raise DataError(f"{where}: field 'test_list' is empty; give at least one assert")
    setup = row.get("test_setup_code", "")
    if "test_imports" in row:
        setup = "\n".join([setup, *string_list(row, where, "test_imports")]).strip()
    if not isinstance(setup, str):
        raise DataError(f"{where}: field 'test_setup_code' must be a string, got {type(setup).__name__}")
    shown = "\n".join(tests)
    return Problem(
        id=f"mbpp-{row['task_id']}",
        prompt=f"{text.strip()}\nYour code should pass these tests:\n\n{shown}",
        answer=row["code"],
        split=split,
        meta={
            "entry_point": entry_point(row["code"], tests),
            "tests": f"{setup}\n\n{shown}\n" if setup else f"{shown}\n",
            "solution": row["code"],
        },
    )


class MbppTask(CodeTask):
    def __init__(self, path: str | None = None, hf_id: str | None = None, hf_config: str = "full",
                 name: str = "mbpp", **limits) -> None:
        super().__init__(**limits)
        if (path is None) == (hf_id is None):
            raise DataError(
                "task mbpp needs exactly one of task.options.path (mbpp.jsonl, or a directory with "
                "train/validation/test.jsonl) or task.options.hf_id (e.g. google-research-datasets/mbpp; needs network)"
            )
        self.name, self.path, self.hf_id, self.hf_config = name, path, hf_id, hf_config
        self._cache: dict[str, list[Problem]] = {}

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        if split not in self._cache:
            self._cache[split] = [to_problem(row, where, split) for where, row in self._rows(split)]
        return list(self._cache[split])

    def _rows(self, split: str) -> Rows:
        if self.hf_id is not None:
            return hub_rows("mbpp", self.hf_id, split, REQUIRED, config=self.hf_config)
        path = Path(self.path)
        if path.is_dir():
            return local_rows(path / f"{split}.jsonl", REQUIRED)
        return ((where, row) for where, row in local_rows(path, REQUIRED) if split_of(row["task_id"]) == split)

    def test_program(self, problem: Problem, code: str) -> tuple[str, dict[str, str]]:
        return f"{code}\n\n{problem.meta['tests']}", {}


@register("mbpp")
def make(**options) -> MbppTask:
    return MbppTask(**options)
