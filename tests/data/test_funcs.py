"""The funcs task: seeded, disjoint splits of generated functions whose docstrings read back as
their gold programs, and whose reference solutions pass their hidden tests in the sandbox."""

import dataclasses
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from exectune_jax import layout, sandbox
from exectune_jax.data import tasks
from exectune_jax.data.tasks import DataError
from exectune_jax.data.tasks.funcs import (
    OPS,
    Program,
    body,
    inputs_for,
    outputs,
    parse_problem,
    program_of,
)


def small(**options):
    return tasks.get("funcs", n_train=40, n_validation=20, n_test=20, **options)


def test_splits_are_deterministic_by_seed_and_disjoint():
    a, b, other = small(), small(), small(seed=1)
    splits = {s: a.problems(s) for s in ("train", "validation", "test")}
    assert [p.prompt for p in splits["test"]] == [p.prompt for p in b.problems("test")]
    assert [p.prompt for p in splits["test"]] != [p.prompt for p in other.problems("test")]
    texts = [p.prompt for ps in splits.values() for p in ps]
    assert len(texts) == len(set(texts)) == 80
    assert {p.meta["steps"] for p in splits["train"]} == {2, 3, 4, 5, 6}


def test_evaluation_splits_do_not_move_with_n_train():
    assert small().problems("validation") == tasks.get("funcs", n_train=5, n_validation=20,
                                                       n_test=20).problems("validation")


def test_the_docstring_reads_back_as_the_gold_program():
    for p in small().problems("train"):
        assert parse_problem(p.prompt) == program_of(p)
    assert parse_problem("Maria has 3 apples. How many apples does she have?") is None


def test_every_mistake_is_one_line_that_changes_the_result_on_some_input():
    for name, op in OPS.items():
        program = Program("f", op.domain, ((name, op.k[0] if op.k else None),))
        probes = inputs_for(op.domain, random.Random(0), 12)
        assert "\n" not in op.code + op.mistake
        assert outputs(program, body(program, frozenset({0})), probes) != outputs(program, body(program), probes), name


def test_reference_solutions_pass_their_hidden_tests_in_the_sandbox():
    task = small()
    for p in task.problems("validation")[:10]:
        assert task.check(p, f"```python\n{p.answer}```").correct, p.id


def test_a_reply_with_one_mistaken_line_fails_the_hidden_tests():
    task = small()
    p = task.problems("validation")[0]
    program = program_of(p)
    probes = inputs_for(program.domain, random.Random(0), 12)
    j = next(j for j in range(len(program.ops))
             if outputs(program, body(program, frozenset({j})), probes) != outputs(program, body(program), probes))
    reply = "```python\n" + "\n".join(f"    {x}" for x in body(program, frozenset({j}))) + "\n```"
    verdict = task.check(p, reply)
    assert not verdict.correct and verdict.reason


def test_the_verdict_is_the_hidden_tests_run_in_the_sandbox():
    task = small()
    p = task.problems("validation")[0]
    reply = f"```python\n{p.answer}```"
    first = p.meta["tests"].splitlines()[0]
    broken = first.rsplit("==", 1)[0] + "== 'not this'\n"
    assert task.check(p, reply).correct
    assert not task.check(dataclasses.replace(p, meta={**p.meta, "tests": broken}), reply).correct


def test_a_program_checked_again_reuses_its_one_sandboxed_run_and_other_code_runs_its_own():
    """The same reply for the same problem runs once (also when checks overlap); another reply,
    or the same reply to another problem, runs again and gets its own verdict."""
    task = small()
    p, q = task.problems("validation")[:2]
    right = f"```python\n{p.answer}```"
    wrong = "```python\n    return None\n```"
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda reply: task.check(p, reply), [right] * 6 + [wrong] * 2))
    assert [v.correct for v in verdicts] == [True] * 6 + [False] * 2
    assert (task.sandbox_runs.runs, task.sandbox_runs.reused) == (2, 6)
    assert not task.check(q, right).correct and task.sandbox_runs.runs == 3
    assert task.check(p, right).correct and task.sandbox_runs.runs == 3


def test_a_later_stage_reads_the_runs_store_and_a_timeout_is_run_again(tmp_path):
    """Two task objects of one run (two stages, or two processes side by side) share the run's
    sandboxed results: a program the first ran is read back by the second, including one the
    first appended after the second had read the store; a timed-out run is not kept, and a
    line torn by a crash costs only its own program."""
    first, later = (tasks.for_run("funcs", {"n_train": 40, "n_validation": 20, "n_test": 20}, tmp_path)
                    for _ in range(2))
    p, q = first.problems("validation")[:2]
    right = f"```python\n{p.answer}```"
    assert first.check(p, right).correct and first.sandbox_runs.runs == 1
    assert later.check(p, right).correct
    assert (later.sandbox_runs.runs, later.sandbox_runs.stored) == (0, 1)
    assert not first.check(q, right).correct  # appended after `later` read the store
    assert not later.check(q, right).correct
    assert (later.sandbox_runs.runs, later.sandbox_runs.stored) == (0, 2)

    store = layout.sandbox_results(tmp_path)
    timeout = sandbox.SandboxResult(passed=False, reason="timeout", returncode=None, stdout="", stderr="",
                                    seconds=10.0, network_isolated=True)
    assert first.sandbox_runs.result("slow", lambda: timeout) is timeout
    assert '"slow"' not in store.read_text()
    ran = []
    assert later.sandbox_runs.result("slow", lambda: ran.append(1) or timeout) is timeout and ran == [1]
    with open(store, "a") as f:
        f.write('{"key": "torn", "res')  # a crash mid-append
    third = tasks.for_run("funcs", {"n_train": 40, "n_validation": 20, "n_test": 20}, tmp_path)
    assert third.check(p, right).correct and third.sandbox_runs.stored == 1
    assert len([json.loads(line) for line in store.read_text().splitlines()]) == 2  # p's and q's programs


def test_bad_options_name_the_option():
    with pytest.raises(DataError, match="n_tests"):
        tasks.get("funcs", n_tests=1)
    with pytest.raises(DataError, match="min_steps"):
        tasks.get("funcs", min_steps=1)
