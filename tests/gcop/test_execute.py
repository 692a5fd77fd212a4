"""Execution through the real client path: pool -> loopback sim server -> verifier."""

import pytest

from exectune_jax.api.cache import Cache
from exectune_jax.api.ledger import Ledger
from exectune_jax.api.pool import Pool
from exectune_jax.config import ApiConfig, EndpointConfig
from exectune_jax.data import tasks
from exectune_jax.data.tasks.arith import check_number, parse_problem
from exectune_jax.gcop import prompts
from exectune_jax.gcop.execute import execute_many, requests_for
from exectune_jax.gcop.executability import executability
from exectune_jax.gcop.strategy import render
from exectune_jax.sim import models
from exectune_jax.sim.server import SimServer, sim_base_url
from exectune_jax.sim.teacher import atomic


@pytest.fixture(scope="module")
def problems():
    return tasks.get("arith", n_train=0, n_validation=0, n_test=24).problems("test")


@pytest.fixture(scope="module")
def task():
    return tasks.get("arith", n_train=0, n_validation=0, n_test=24)


def open_pool(tmp_path, server, provider="openai", max_retries=8):
    def endpoint(model):
        return EndpointConfig(provider=provider, base_url=sim_base_url(server.url, provider), model=model,
                              max_tokens=512, timeout_s=5.0)

    cfg = ApiConfig(concurrency=8, max_retries=max_retries, backoff_base_s=0.001, backoff_max_s=0.01,
                    circuit_breaker_failures=10_000)
    return Pool({"core": endpoint("sim-core"), "core_strong": endpoint("sim-core-strong")}, cfg,
                cache=Cache(tmp_path / "calls.sqlite"), ledger=Ledger(tmp_path / "ledger.jsonl"))


def expected(problem, text, core="sim-core", seed=0):
    reply = models.get(core).complete(prompts.core_messages(problem, "math", text), max_tokens=512,
                                      temperature=0.0, seed=seed)
    return check_number(problem, reply).correct


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_outcomes_over_http_match_the_in_process_core_and_carry_cost(tmp_path, task, problems, provider):
    items = [(p, None) for p in problems] + [(p, render(atomic(parse_problem(p.prompt)))) for p in problems]
    with SimServer() as server, open_pool(tmp_path, server, provider) as pool:
        outcomes = execute_many(pool, task, items, stage="eval", sample_index=0)
    assert [o.correct for o in outcomes] == [expected(p, s) for p, s in items]
    assert all(o.error is None and o.input_tokens > 0 and o.output_tokens > 0 and o.usd > 0 for o in outcomes)
    alone, guided = outcomes[: len(problems)], outcomes[len(problems):]
    assert sum(o.usd for o in guided) < sum(o.usd for o in alone)


def test_repeated_execution_is_replayed_from_the_cache_for_free(tmp_path, task, problems):
    items = [(p, None) for p in problems[:6]]
    with SimServer() as server, open_pool(tmp_path, server) as pool:
        first = execute_many(pool, task, items, stage="eval")
        second = execute_many(pool, task, items, stage="eval")
    assert [o.correct for o in first] == [o.correct for o in second]
    assert all(o.cached and o.usd == 0 for o in second) and not any(o.cached for o in first)


def test_sample_indices_select_independent_samples_of_the_core(tmp_path, task, problems):
    items = [(p, None) for p in problems for _ in range(3)]
    indices = [i for _ in problems for i in range(3)]
    with SimServer() as server, open_pool(tmp_path, server) as pool:
        outcomes = execute_many(pool, task, items, stage="eval", sample_index=indices, endpoint="core_strong")
    want = [expected(p, None, "sim-core-strong", i) for (p, _), i in zip(items, indices)]
    assert [o.correct for o in outcomes] == want


def test_failed_calls_are_never_scored(tmp_path, task, problems):
    items = [(p, None) for p in problems]
    with SimServer(fault_rate=0.5, seed=3, fault_kinds=("server_error",)) as server, \
            open_pool(tmp_path, server, max_retries=0) as pool:
        outcomes = execute_many(pool, task, items, stage="eval")
    failed = [o for o in outcomes if o.correct is None]
    assert 0 < len(failed) < len(outcomes)
    assert all(o.error == "server_error" and o.reason == "call failed: server_error" for o in failed)
    for o, (p, _) in zip(outcomes, items):
        if o.correct is not None:
            assert o.correct == expected(p, None)
    est = executability({p.id: [o] for o, (p, _) in zip(outcomes, items)})
    # core-alone executions have no strategy to follow: none is decided, none is scored
    assert est.n_failed == len(failed) and est.n_problems == 0
    assert est.n_unknown == len(outcomes) - len(failed)


def test_one_sample_index_per_item_is_required(problems):
    with pytest.raises(ValueError, match="2 sample indices for 1 items"):
        requests_for("math", [(problems[0], None)], stage="eval", sample_index=[0, 1])
