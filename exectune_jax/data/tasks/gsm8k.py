"""`gsm8k`: grade-school math from local JSONL files or, when online, a Hugging Face dataset.

Rows are `{"question": ..., "answer": "...reasoning... #### N"}`. The calculator annotations
in the reasoning (`<<48/2=24>>`) give a gold program for free; it is kept in `meta`.
Validation is a seeded hold-out of the train file, since GSM8K ships only train and test.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from exectune_jax.data.tasks import register
from exectune_jax.data.tasks.answers import normalize_number
from exectune_jax.data.tasks.arith import check_number
from exectune_jax.data.tasks.base import DataError, Problem, Verdict, check_split, read_jsonl

_FINAL = re.compile(r"####\s*(.+?)\s*$")
_CALC = re.compile(r"<<([^<>=]+)=([^<>]+)>>")


def gold_answer(answer: str) -> str | None:
    """The number after the final `####`, canonicalised, or None when absent."""
    m = _FINAL.search(answer.strip())
    return normalize_number(m.group(1)) if m else None


def gold_program(answer: str) -> list[list[str]]:
    """The calculator annotations as [expression, value] pairs, in order."""
    return [[expr.strip(), value.strip()] for expr, value in _CALC.findall(answer)]


def to_problem(row: dict, where: str, split: str, index: int) -> Problem:
    answer = gold_answer(row["answer"])
    if answer is None:
        raise DataError(f"{where}: field 'answer' must end with '#### <number>' (GSM8K format)")
    program = gold_program(row["answer"])
    return Problem(
        id=f"gsm8k-{split}-{index:05d}", prompt=row["question"].strip(), answer=answer, split=split,
        meta={"program": program, "steps": len(program), "solution": row["answer"]},
    )


class Gsm8kTask:
    family = "math"

    def __init__(self, path: str | None = None, hf_id: str | None = None, n_validation: int = 200,
                 seed: int = 0, name: str = "gsm8k") -> None:
        if (path is None) == (hf_id is None):
            raise DataError(
                "task gsm8k needs exactly one of task.options.path (a directory with train.jsonl and "
                "test.jsonl in the GSM8K format) or task.options.hf_id (e.g. openai/gsm8k; needs network)"
            )
        if not isinstance(n_validation, int) or n_validation < 0:
            raise DataError(f"task option n_validation={n_validation!r}: must be a whole number >= 0")
        self.name, self.path, self.hf_id = name, path, hf_id
        self.n_validation, self.seed = n_validation, seed
        self._files: dict[str, list[Problem]] = {}

    def _load(self, source: str) -> list[Problem]:
        if source not in self._files:
            rows = self._local(source) if self.path is not None else self._hub(source)
            self._files[source] = [to_problem(row, where, source, i) for i, (where, row) in enumerate(rows)]
        return self._files[source]

    def _local(self, source: str) -> list[tuple[str, dict]]:
        file = Path(self.path) / f"{source}.jsonl"
        return [(f"{file}:{line}", row) for line, row in read_jsonl(file, {"question": str, "answer": str})]

    def _hub(self, source: str) -> list[tuple[str, dict]]:
        try:
            import datasets
        except ImportError:
            raise DataError(
                f"task gsm8k hf_id={self.hf_id!r} needs the `datasets` package (pip install datasets); "
                "or download the files and set task.options.path"
            ) from None
        try:
            rows = datasets.load_dataset(self.hf_id, "main", split=source)
        except Exception as e:  # the hub client raises many kinds; all mean "not reachable here"
            raise DataError(
                f"task gsm8k: could not load {self.hf_id!r} split {source!r} ({type(e).__name__}: {e}); "
                "offline, set task.options.path to a directory with train.jsonl and test.jsonl"
            ) from None
        out = []
        for i, row in enumerate(rows):
            where = f"{self.hf_id}[{source}] row {i}"
            for key in ("question", "answer"):
                if not isinstance(row.get(key), str):
                    raise DataError(f"{where}: field {key!r} must be a string")
            out.append((where, dict(row)))
        return out

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        if split == "test":
            return list(self._load("test"))
        train = self._load("train")
        held = set(random.Random(f"gsm8k/{self.seed}").sample(range(len(train)), min(self.n_validation, len(train))))
        return [p for i, p in enumerate(train) if (i in held) == (split == "validation")]

    def check(self, problem: Problem, text: str) -> Verdict:
        return check_number(problem, text)


@register("gsm8k")
def make(**options) -> Gsm8kTask:
    return Gsm8kTask(**options)
