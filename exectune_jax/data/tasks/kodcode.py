"""`kodcode`: KodCode-style problems checked by pytest, from local JSONL or, when online, the hub.

Rows (KodCode-V1 fields): `question`, `solution` (reference code), `test` (pytest code that
imports from `solution`; `test_code` is accepted too), optional `question_id` and `test_info`
(a list of {"function_name", "function_declaration", ...}; the declarations are added to the
prompt so the reply uses the names the tests import). The reply's code is saved as
`solution.py` beside `test_solution.py`, and pytest runs in the sandbox.

Options: `path` (a JSONL file) or `hf_id` (e.g. KodCode/KodCode-V1; needs network and the
`datasets` package). KodCode ships a single train split, so `validation` and `test` are
seeded hold-outs of `n_validation` and `n_test` rows.
"""

from __future__ import annotations

import random
import re

from exectune_jax.data.tasks import register
from exectune_jax.data.tasks.base import DataError, Problem, check_split
from exectune_jax.data.tasks.code import VERIFIER_MISSING, CodeTask, Rows, hub_rows, local_rows

REQUIRED = {"question": str, "solution": str}
RUNNER = f"""\
try:
    import pytest
except ImportError as e:  # before any of the reply's code runs: the checker's failure, not the reply's
    raise RuntimeError("{VERIFIER_MISSING}: " + str(e)) from None
""" + """
status = pytest.main(["-q", "-x", "-p", "no:cacheprovider", "-c", "/dev/null", "--rootdir", ".", "test_solution.py"])
assert status == 0, f"pytest exit status {int(status)}: " + {1: "a test failed", 2: "collection failed", 5: "no tests"}.get(int(status), "error")
"""


def tests_of(row: dict, where: str) -> str:
    tests = row.get("test", row.get("test_code"))
    if not isinstance(tests, str) or not tests.strip():
        got = "missing" if tests is None else f"{type(tests).__name__}"
        raise DataError(f"{where}: field 'test' (or 'test_code') must be pytest code as a string, got {got}")
    return tests


def declarations(row: dict, where: str) -> list[dict]:
    info = row.get("test_info") or []
    if not isinstance(info, list) or not all(isinstance(item, dict) for item in info):
        raise DataError(f"{where}: field 'test_info' must be a list of objects, got {type(info).__name__}")
    return info


def entry_point(info: list[dict], tests: str) -> str | None:
    for item in info:
        if isinstance(item.get("function_name"), str):
            return item["function_name"]
    match = re.search(r"from\s+solution\s+import\s+\(?\s*(\w+)", tests)
    return match.group(1) if match else None


def to_problem(row: dict, where: str, split: str, index: int) -> Problem:
    tests = tests_of(row, where)
    info = declarations(row, where)
    prompt = row["question"].strip()
    declared = [item["function_declaration"].strip() for item in info if isinstance(item.get("function_declaration"), str)]
    if declared:
        prompt += "\n\nNote that the function declaration is " + "; ".join(declared) + "."
    ident = row.get("question_id")
    return Problem(
        id=f"kodcode-{ident if isinstance(ident, str) and ident else index}",
        prompt=prompt,
        answer=row["solution"],
        split=split,
        meta={"entry_point": entry_point(info, tests), "tests": tests, "solution": row["solution"]},
    )


class KodCodeTask(CodeTask):
    requires = ("pytest",)

    def __init__(self, path: str | None = None, hf_id: str | None = None, n_validation: int = 100,
                 n_test: int = 500, seed: int = 0, name: str = "kodcode", **limits) -> None:
        self.name = name  # before the base class checks the sandbox can import pytest, naming the task
        super().__init__(**limits)
        if (path is None) == (hf_id is None):
            raise DataError(
                "task kodcode needs exactly one of task.options.path (a JSONL file with KodCode fields) "
                "or task.options.hf_id (e.g. KodCode/KodCode-V1; needs network)"
            )
        for option, value in (("n_validation", n_validation), ("n_test", n_test)):
            if not isinstance(value, int) or value < 0:
                raise DataError(f"task option {option}={value!r}: must be a whole number >= 0")
        self.path, self.hf_id = path, hf_id
        self.n_validation, self.n_test, self.seed = n_validation, n_test, seed
        self._splits: dict[str, list[Problem]] | None = None

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        if self._splits is None:
            self._splits = self._split(list(self._rows()))
        return list(self._splits[split])

    def _rows(self) -> Rows:
        if self.hf_id is not None:
            return hub_rows("kodcode", self.hf_id, "train", REQUIRED)
        return local_rows(self.path, REQUIRED)

    def _split(self, rows: list[tuple[str, dict]]) -> dict[str, list[Problem]]:
        """Seeded hold-outs: the same seed and file give the same three splits."""
        order = list(range(len(rows)))
        random.Random(f"kodcode/{self.seed}").shuffle(order)
        n_test = min(self.n_test, len(rows))
        n_validation = min(self.n_validation, len(rows) - n_test)
        assigned = {i: "test" for i in order[:n_test]}
        assigned.update({i: "validation" for i in order[n_test:n_test + n_validation]})
        splits: dict[str, list[Problem]] = {"train": [], "validation": [], "test": []}
        for i, (where, row) in enumerate(rows):
            split = assigned.get(i, "train")
            splits[split].append(to_problem(row, where, split, i))
        return splits

    def test_program(self, problem: Problem, code: str) -> tuple[str, dict[str, str]]:
        return RUNNER, {"solution.py": code, "test_solution.py": problem.meta["tests"]}

    def sandbox_env(self) -> dict[str, str]:
        return {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


@register("kodcode")
def make(**options) -> KodCodeTask:
    return KodCodeTask(**options)
