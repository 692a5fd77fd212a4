import json

import pytest

from exectune_jax.data import tasks
from exectune_jax.data.tasks.base import DataError
from exectune_jax.data.tasks.gsm8k import gold_answer, gold_program

PHRASINGS = (
    "The answer is {n}.",
    "So she makes ${c} per day.\nThe answer is ${c}.",
    "Total: {n} apples.",
    "Therefore the final answer is \\boxed{{{n}}}.",
    "#### {n}",
    "The answer is: **{c}**",
    "He has {n} left",
)


def test_every_test_row_is_accepted_in_common_phrasings_and_off_by_one_is_rejected(gsm8k_dir):
    task = tasks.get("gsm8k", path=str(gsm8k_dir))
    problems = task.problems("test")
    assert len(problems) == 1319
    for p in problems:
        value = int(p.answer) if "." not in p.answer else float(p.answer)
        comma = f"{value:,}"
        for phrasing in PHRASINGS:
            text = phrasing.format(n=p.answer, c=comma)
            assert task.check(p, text).correct, (p.id, text)
        if "." not in p.answer:
            assert not task.check(p, f"The answer is {int(p.answer) + 1}.").correct


def test_validation_is_a_seeded_holdout_of_train(gsm8k_dir):
    task = tasks.get("gsm8k", path=str(gsm8k_dir), n_validation=50)
    train, validation = task.problems("train"), task.problems("validation")
    assert len(validation) == 50
    assert not {p.id for p in train} & {p.id for p in validation}
    assert [p.id for p in tasks.get("gsm8k", path=str(gsm8k_dir), n_validation=50).problems("validation")] == [
        p.id for p in validation
    ]


def test_gold_answer_and_program_come_from_the_solution_text():
    answer = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"
    assert gold_answer(answer) == "1018"
    assert gold_program(answer) == [["16-3-4", "9"], ["9*2", "18"]]
    assert gold_answer("no marker") is None


def write_rows(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_bad_rows_name_file_line_and_field(tmp_path):
    good = {"question": "q?", "answer": "x #### 3"}
    cases = [
        ([good, {"question": "q?"}], r"test\.jsonl:2: field 'answer' is missing"),
        ([good, good, "{not json"], r"test\.jsonl:3: not valid JSON"),
        ([{"question": 5, "answer": "#### 1"}], r"test\.jsonl:1: field 'question' must be str"),
        ([good, {"question": "q", "answer": "no marker"}], r"test\.jsonl:2: field 'answer' must end with '####"),
    ]
    for rows, pattern in cases:
        write_rows(tmp_path / "test.jsonl", rows)
        with pytest.raises(DataError, match=pattern):
            tasks.get("gsm8k", path=str(tmp_path)).problems("test")


def test_missing_source_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="path.*hf_id"):
        tasks.get("gsm8k")
    with pytest.raises(DataError, match="file not found"):
        tasks.get("gsm8k", path=str(tmp_path)).problems("test")


def test_hub_source_without_network_or_package_fails_with_a_pointer_to_path():
    with pytest.raises(DataError, match="task.options.path"):
        tasks.get("gsm8k", hf_id="openai/gsm8k").problems("test")
