"""Every parse of a core reply on what a real model wrote: SmolLM2-135M-Instruct behind llama.cpp's
server (docs/real-apis.md, "A real core"). The replies are recorded in tests/data/; each parser
returns the right value or `unknown` (never a guess that scores), and the trace checker's
agreement with the hand labels is the one docs/real-apis.md reports."""

import json
from pathlib import Path

import pytest

from exectune_jax.api.pool import Result
from exectune_jax.data.tasks.answers import extract_answer
from exectune_jax.data.tasks.arith import check_number
from exectune_jax.data.tasks.base import Problem
from exectune_jax.gcop import trace
from exectune_jax.gcop.execute import CUT_BEFORE_ANSWER, verdict_of
from exectune_jax.gcop.follow import agreement, judge_check, parse_judge_reply

DATA = Path(__file__).resolve().parents[1] / "data"
REPLIES = [json.loads(line) for line in (DATA / "real_core_replies.jsonl").read_text().splitlines()]
LABELS = [json.loads(line) for line in (DATA / "real_core_labels.jsonl").read_text().splitlines()]


def of(kind):
    rows = [r for r in REPLIES if r["kind"] == kind]
    return pytest.mark.parametrize("row", rows, ids=[f"{r.get('id', 'judge')}-{i}" for i, r in enumerate(rows)])


class MathTask:
    family = "math"
    check = staticmethod(check_number)


def reply(text, stop_reason):
    return Result(True, text, stop_reason, 0, 0, 0.0, False, 1, None)


@of("answer")
def test_the_final_answer_of_a_real_reply_is_what_it_states_or_none(row):
    problem = Problem(row["id"], "", row["answer"], "validation")
    verdict = verdict_of(MathTask, problem, reply(row["text"], row["stop_reason"]))
    assert verdict.extracted == row["want"], row["note"]
    assert verdict.correct == (row["want"] == row["answer"])
    if row["want"] is None and row["stop_reason"] == "length":
        assert verdict.reason == CUT_BEFORE_ANSWER


def test_a_cut_off_reply_is_wrong_even_when_its_last_number_is_the_gold_answer():
    lucky = next(r for r in REPLIES if r["kind"] == "answer" and r["id"].endswith("00062"))
    assert extract_answer(lucky["text"]) == lucky["answer"]  # the last number, by accident
    problem = Problem(lucky["id"], "", lucky["answer"], "validation")
    assert not verdict_of(MathTask, problem, reply(lucky["text"], "length")).correct
    # the same text, had it ended by itself, is read as the task reads any reply
    assert verdict_of(MathTask, problem, reply(lucky["text"], "stop")).correct


@of("trace")
def test_the_trace_checker_reads_real_step_lines(row):
    verdict, reason = trace.check(row["strategy"], row["response"])
    assert verdict == row["want"], f"{row['note']}: {reason}"


@of("judge")
def test_a_real_judge_reply_out_of_the_fixed_form_is_unknown(row):
    assert parse_judge_reply(row["text"]) is None
    assert judge_check(True, row["text"], None, 10, 10, 0.0).verdict == "unknown"


@pytest.mark.parametrize(("text", "want"), [
    ("followed: yes or no\nreason: one short sentence", None),  # the instruction echoed
    ("followed: yes/no", None),
    ("**followed:** no\n**reason:** step 2 is skipped", ("no", "step 2 is skipped")),
    ("Followed: Yes.", ("yes", "")),
    ("followed: no, it computes its own way\nreason: own way", ("no", "own way")),
])
def test_the_judge_verdict_line_names_one_answer(text, want):
    assert parse_judge_reply(text) == want


def test_the_hand_labels_are_at_least_100_real_executions_each_with_a_reason():
    assert len(LABELS) >= 100
    assert len({r["id"] for r in LABELS}) == len(LABELS)
    for r in LABELS:
        assert r["followed"] in ("yes", "no") and r["reason"].strip()
        assert r["strategy"].startswith("<strategy>") and r["response"]


def test_the_trace_checker_agrees_with_the_hand_labels_as_docs_real_apis_reports():
    """Update the table in docs/real-apis.md when a change to gcop/trace.py moves these."""
    got = agreement([(trace.check(r["strategy"], r["response"])[0], r["followed"] == "yes") for r in LABELS])
    assert (got["decided"], got["unknown"]) == (96, 4)
    assert got["agreement"] == 1.0 and got["kappa"] == 1.0
