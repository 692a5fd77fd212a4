"""`jsonl`: a user's own problems, one JSON object per line, with a declared answer type.

Options: `train` / `validation` / `test` (file paths; give the splits you use),
`answer_type` = number | exact | choice, `family` = math | code, and the field names
`question_field` ("question"), `answer_field` ("answer"), `choices_field` ("choices"),
`id_field` ("id", optional in rows). Choice rows list their options and give the answer as a
letter, a 0-based index or the option's text; the prompt shows the options as "A. ...".
"""

from __future__ import annotations

import re
import string

from exectune_jax.data.tasks import register
from exectune_jax.data.tasks.answers import normalize_number
from exectune_jax.data.tasks.arith import check_number
from exectune_jax.data.tasks.base import SPLITS, DataError, Problem, Verdict, check_split, read_jsonl

ANSWER_TYPES = ("number", "exact", "choice")
_ANSWER_LINE = re.compile(r"answer\s*(?:is|:)\s*(.+)", re.IGNORECASE)
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])")


def _final_text(text: str) -> str | None:
    """What a reply gives as its answer: after the last "answer is"/"Answer:", else its last line."""
    found = _ANSWER_LINE.findall(text)
    line = found[-1] if found else next((s for s in reversed(text.strip().splitlines()) if s.strip()), None)
    if line is None:
        return None
    return line.strip().strip("*").strip().rstrip(".").strip().strip("\"'`").strip()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


class JsonlTask:
    def __init__(self, train: str | None = None, validation: str | None = None, test: str | None = None,
                 answer_type: str = "number", family: str = "math", question_field: str = "question",
                 answer_field: str = "answer", choices_field: str = "choices", id_field: str = "id",
                 name: str = "jsonl") -> None:
        if answer_type not in ANSWER_TYPES:
            raise DataError(f"task option answer_type={answer_type!r}: use one of {', '.join(ANSWER_TYPES)}")
        if family not in ("math", "code"):
            raise DataError(f"task option family={family!r}: use math or code")
        self.name, self.family, self.answer_type = name, family, answer_type
        self.files = {"train": train, "validation": validation, "test": test}
        self.fields = (question_field, answer_field, choices_field, id_field)
        self._cache: dict[str, list[Problem]] = {}

    def problems(self, split: str) -> list[Problem]:
        check_split(split)
        if self.files[split] is None:
            given = [s for s in SPLITS if self.files[s]]
            raise DataError(
                f"task jsonl has no file for split {split!r}; set task.options.{split} "
                f"(files given: {', '.join(given) or 'none'})"
            )
        if split not in self._cache:
            self._cache[split] = self._read(split, self.files[split])
        return list(self._cache[split])

    def _read(self, split: str, path: str) -> list[Problem]:
        question, answer, choices, ident = self.fields
        required: dict = {question: str, answer: (str, int, float)}
        if self.answer_type == "choice":
            required[choices] = list
        out = []
        for line, row in read_jsonl(path, required):
            where = f"{path}:{line}"
            prompt = row[question].strip()
            if not prompt:
                raise DataError(f"{where}: field {question!r} is empty")
            meta: dict = {}
            if self.answer_type == "number":
                gold = normalize_number(str(row[answer]))
                if gold is None:
                    raise DataError(f"{where}: field {answer!r} must be a number for answer_type=number")
            elif self.answer_type == "exact":
                gold = str(row[answer]).strip()
                if not gold:
                    raise DataError(f"{where}: field {answer!r} is empty")
            else:
                options = row[choices]
                if len(options) < 2 or len(options) > 26 or not all(isinstance(o, str) and o.strip() for o in options):
                    raise DataError(f"{where}: field {choices!r} must list 2 to 26 non-empty strings")
                gold = _choice_letter(row[answer], options)
                if gold is None:
                    raise DataError(
                        f"{where}: field {answer!r} must be a letter, a 0-based index or the text of one of the choices"
                    )
                prompt += "\n" + "\n".join(f"{string.ascii_uppercase[i]}. {o.strip()}" for i, o in enumerate(options))
                meta["choices"] = [o.strip() for o in options]
            pid = str(row.get(ident, f"{self.name}-{split}-{len(out):05d}"))
            out.append(Problem(id=pid, prompt=prompt, answer=gold, split=split, meta=meta))
        return out

    def check(self, problem: Problem, text: str) -> Verdict:
        if self.answer_type == "number":
            return check_number(problem, text)
        final = _final_text(text or "")
        if final is None:
            return Verdict(False, None, "no answer found")
        if self.answer_type == "choice":
            final = _reply_letter(final, problem.meta["choices"])
            if final is None:
                return Verdict(False, None, "no choice found")
            ok = final == problem.answer
        else:
            ok = _norm(final) == _norm(problem.answer)
        return Verdict(ok, final, "" if ok else f"wrong answer {final} != {problem.answer}")


def _choice_letter(value: object, options: list[str]) -> str | None:
    letters = string.ascii_uppercase[: len(options)]
    if isinstance(value, int) and not isinstance(value, bool):
        return letters[value] if 0 <= value < len(options) else None
    text = str(value).strip()
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    matches = [i for i, o in enumerate(options) if _norm(o) == _norm(text)]
    return letters[matches[0]] if len(matches) == 1 else None


def _reply_letter(final: str, options: list[str]) -> str | None:
    by_text = _choice_letter(final, options)
    if by_text is not None:
        return by_text
    letters = [m for m in _LETTER.findall(final) if m in string.ascii_uppercase[: len(options)]]
    return letters[-1] if letters else None


@register("jsonl")
def make(**options) -> JsonlTask:
    return JsonlTask(**options)
