"""The follow check through the real client path: core and judge on loopback servers, the pool,
the ledger; and the agreement statistics a study measures the estimators with."""

import pytest

from exectune_jax.api.cache import Cache
from exectune_jax.api.ledger import Ledger
from exectune_jax.api.pool import Pool
from exectune_jax.config import ApiConfig, EndpointConfig
from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import parse_problem
from exectune_jax.gcop.execute import execute_many
from exectune_jax.gcop.executability import executability, mixture
from exectune_jax.gcop.follow import agreement, parse_judge_reply
from exectune_jax.gcop.prompts import core_messages, teacher_propose_messages
from exectune_jax.gcop.strategy import render
from exectune_jax.sim import models
from exectune_jax.sim.server import SimServer, sim_base_url
from exectune_jax.sim.teacher import atomic


class Rambling:
    """A judge that never answers in the fixed form."""

    def complete(self, messages, *, max_tokens, temperature, seed):
        return "It looks like a reasonable attempt overall."


@pytest.fixture(scope="module")
def task():
    return tasks.get("arith", n_train=0, n_validation=0, n_test=40)


@pytest.fixture(scope="module")
def items(task):
    """Half atomic strategies (followed), half the teacher's mixed styles (some ignored)."""
    teacher = models.get("sim-teacher")
    problems = task.problems("test")
    mixed = [teacher.complete(teacher_propose_messages(p, "math"), temperature=1.0, seed=k)
             for k, p in enumerate(problems)]
    return ([(p, render(atomic(parse_problem(p.prompt)))) for p in problems]
            + list(zip(problems, mixed)))


def make_pool(tmp_path, core_url, judge_url, **cfg):
    def ep(url, model, **kw):
        return EndpointConfig(base_url=sim_base_url(url, "openai"), model=model, timeout_s=5.0, **kw)

    api = ApiConfig(concurrency=8, max_retries=0, backoff_base_s=0.001, backoff_max_s=0.01,
                    circuit_breaker_failures=10_000, **cfg)
    return Pool({"core": ep(core_url, "sim-core"), "judge": ep(judge_url, "sim-judge", max_tokens=64)},
                api, cache=Cache(tmp_path / "calls.sqlite"), ledger=Ledger(tmp_path / "ledger.jsonl"))


def test_every_guided_execution_gets_both_estimators_and_the_judge_is_its_own_ledger_stage(tmp_path, task, items):
    alone = [(p, None) for p, _ in items[:5]]
    with SimServer() as server, make_pool(tmp_path, server.url, server.url) as pool:
        outcomes = execute_many(pool, task, items + alone, stage="eval.x")
        totals = pool.ledger.totals()
        again = execute_many(pool, task, items, stage="eval.x")
    guided, solo = outcomes[: len(items)], outcomes[len(items):]
    assert all(o.followed is None and not o.checks for o in solo)
    assert all({c.estimator for c in o.checks} == {"judge", "trace"} for o in guided)
    assert all(o.followed == next(c.verdict for c in o.checks if c.estimator == "judge") for o in guided)
    assert {o.followed for o in guided} == {"yes", "no"}
    assert totals["eval.x.judge"]["calls"] == len(items) and totals["eval.x.judge"]["usd"] > 0
    assert sum(o.follow_usd for o in guided) == pytest.approx(totals["eval.x.judge"]["usd"])
    # cached and reproducible: the replay gives the same verdicts at no cost
    assert [o.followed for o in again] == [o.followed for o in guided]
    assert all(o.follow_usd == 0 for o in again)


def test_failed_judge_calls_are_unknown_excluded_and_counted(tmp_path, task, items):
    with SimServer() as core, SimServer(fault_rate=0.5, seed=5, fault_kinds=("server_error",)) as judge, \
            make_pool(tmp_path, core.url, judge.url) as pool:
        outcomes = execute_many(pool, task, items, stage="eval")
    unknown = [o for o in outcomes if o.followed == "unknown"]
    assert 0 < len(unknown) < len(outcomes)
    assert all(o.follow_reason == "judge call failed: server_error" for o in unknown)
    assert all(o.correct is not None for o in unknown)  # the execution itself still counts for accuracy
    by_problem = {f"{i}": [o] for i, o in enumerate(outcomes)}
    est = executability(by_problem)
    assert est.n_unknown == len(unknown) and est.n_calls == len(outcomes) - len(unknown)
    decided = [o for o in outcomes if o.followed != "unknown"]
    assert est.mean == pytest.approx(sum(o.followed == "yes" for o in decided) / len(decided))
    assert mixture(by_problem)["unknown"] == len(unknown)


def test_unparseable_judge_replies_are_unknown_never_a_verdict(tmp_path, task, items):
    with SimServer() as core, SimServer(models={"sim-judge": Rambling()}) as judge, \
            make_pool(tmp_path, core.url, judge.url) as pool:
        outcomes = execute_many(pool, task, items[:6], stage="eval")
    assert {o.followed for o in outcomes} == {"unknown"}
    assert all(o.checks[0].error == "unparseable" for o in outcomes)
    assert executability({"a": outcomes}).n_problems == 0


def test_trace_estimator_needs_no_judge_call(tmp_path, task, items):
    with SimServer() as server, make_pool(tmp_path, server.url, server.url, follow_check="trace") as pool:
        outcomes = execute_many(pool, task, items, stage="eval")
        totals = pool.ledger.totals()
    assert "eval.judge" not in totals
    assert all([c.estimator for c in o.checks] == ["trace"] for o in outcomes)
    assert all(o.followed == o.checks[0].verdict for o in outcomes)


def test_the_core_is_asked_for_step_lines_only_when_it_gets_a_strategy(task):
    p = task.problems("test")[0]
    alone, guided = core_messages(p, "math", None), core_messages(p, "math", "<strategy>\n1. Add 1 to 2.\n</strategy>")
    assert "Step k:" in guided[0]["content"] and "Step k:" not in alone[0]["content"]


@pytest.mark.parametrize(("reply", "want"), [
    ("followed: yes\nreason: every step is there", ("yes", "every step is there")),
    ("Followed: NO\nReason: it solves the problem its own way.", ("no", "it solves the problem its own way.")),
    ("followed: no", ("no", "")),
    ("The response follows the strategy.", None),
    ("followed: maybe\nreason: hard to say", None),
    ("", None),
])
def test_judge_replies_parse_only_in_the_fixed_form(reply, want):
    assert parse_judge_reply(reply) == want


def test_agreement_and_kappa_match_hand_computed_values():
    # 10 decided: estimator yes on 5 (4 true), no on 5 (1 true); 2 unknown left out
    pairs = ([("yes", True)] * 4 + [("yes", False)] + [("no", True)] + [("no", False)] * 4
             + [("unknown", True), ("unknown", False)])
    got = agreement(pairs)
    assert (got["n"], got["decided"], got["unknown"]) == (12, 10, 2)
    assert got["agreement"] == pytest.approx(0.8)
    # chance agreement: 0.5 * 0.5 + 0.5 * 0.5 = 0.5, so kappa = (0.8 - 0.5) / 0.5
    assert got["kappa"] == pytest.approx(0.6)
    assert got["confusion"] == {"yes_true": 4, "yes_false": 1, "no_true": 1, "no_false": 4}


def test_kappa_is_undefined_when_both_raters_say_the_same_thing_always():
    got = agreement([("yes", True)] * 5)
    assert got["agreement"] == 1.0 and got["kappa"] is None
    assert agreement([("unknown", True)])["agreement"] is None
