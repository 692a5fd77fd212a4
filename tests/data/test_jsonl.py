import json

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.base import DataError


def make(tmp_path, rows, **options):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return tasks.get("jsonl", test=str(path), **options), path


def test_number_answers_are_compared_numerically(tmp_path):
    task, _ = make(tmp_path, [{"question": "2+2?", "answer": 4}, {"id": "b", "question": "1k?", "answer": "1,000"}])
    a, b = task.problems("test")
    assert b.id == "b" and a.id == "jsonl-test-00000"
    assert task.check(a, "The answer is 4.").correct
    assert task.check(b, "It is $1,000.").correct
    assert not task.check(a, "The answer is 5.").correct


def test_exact_answers_ignore_case_spacing_and_trailing_period(tmp_path):
    task, _ = make(tmp_path, [{"question": "Capital of France?", "answer": "Paris"}], answer_type="exact")
    (p,) = task.problems("test")
    assert task.check(p, "Let me think.\nThe answer is  paris.").correct
    assert task.check(p, "Paris").correct
    verdict = task.check(p, "The answer is Lyon.")
    assert not verdict.correct and verdict.reason == "wrong answer Lyon != Paris"


def test_choice_answers_accept_letters_and_option_text(tmp_path):
    rows = [{"question": "Largest?", "choices": ["1", "3", "2"], "answer": "B"},
            {"question": "Colour?", "choices": ["red", "blue"], "answer": 0},
            {"question": "Pet?", "choices": ["cat", "dog"], "answer": "dog"}]
    task, _ = make(tmp_path, rows, answer_type="choice")
    first, second, third = task.problems("test")
    assert first.prompt.endswith("A. 1\nB. 3\nC. 2")
    assert [first.answer, second.answer, third.answer] == ["B", "A", "B"]
    assert task.check(first, "The answer is (B).").correct
    assert task.check(second, "Answer: red").correct
    assert not task.check(third, "The answer is A").correct


@pytest.mark.parametrize(
    ("rows", "options", "pattern"),
    [
        ([{"question": "q"}], {}, r"rows\.jsonl:1: field 'answer' is missing"),
        ([{"question": "q", "answer": 1}, {"question": "q", "answer": "many"}], {},
         r"rows\.jsonl:2: field 'answer' must be a number"),
        ([{"question": "q", "answer": "A"}], {"answer_type": "choice"}, r"rows\.jsonl:1: field 'choices' is missing"),
        ([{"question": "q", "answer": "Z", "choices": ["a", "b"]}], {"answer_type": "choice"},
         r"rows\.jsonl:1: field 'answer' must be a letter"),
        ([{"question": "", "answer": 1}], {}, r"rows\.jsonl:1: field 'question' is empty"),
        (["[1, 2]"], {}, r"rows\.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, rows, options, pattern):
    task, _ = make(tmp_path, rows, **options)
    with pytest.raises(DataError, match=pattern):
        task.problems("test")


def test_missing_split_file_and_bad_options_are_user_errors(tmp_path):
    task, _ = make(tmp_path, [{"question": "q", "answer": 1}])
    with pytest.raises(DataError, match="task.options.train"):
        task.problems("train")
    with pytest.raises(DataError, match="answer_type"):
        tasks.get("jsonl", answer_type="fuzzy")
