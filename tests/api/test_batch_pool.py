"""Batch mode of the pool against serve-sim's batch APIs, through the real client (nothing mocked)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loopback import endpoint, expected_text, make_pool
from resume_client import requests_for

from exectune_jax.api.pool import Request
from exectune_jax.errors import UserError

HERE = Path(__file__).parent
PROVIDERS = ["openai", "anthropic"]


def _ask(i: int, stage: str = "eval") -> Request:
    return Request("core", [("system", "Answer briefly."), ("user", f"question {i}")], stage=stage)


def _batch_pool(run_dir: Path, server, provider: str, **cfg):
    cfg.setdefault("batch_poll_s", 0.02)
    cfg.setdefault("batch_poll_max_s", 0.1)
    return make_pool(run_dir, {"core": endpoint(server, provider)}, batch_log=run_dir / "batches.jsonl",
                     mode="batch", **cfg)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_batch_answers_equal_online_answers_at_half_the_online_price(sim_server, tmp_path, provider):
    reqs = [_ask(i) for i in range(40)]
    with make_pool(tmp_path / "online", {"core": endpoint(sim_server(), provider)}, concurrency=1) as pool:
        online = pool.map(reqs)
        online_totals = pool.ledger.totals()["eval"]
    server = sim_server(batch_delay_s=0.1)
    with _batch_pool(tmp_path / "batch", server, provider) as pool:
        batched = pool.map(reqs)
        totals = pool.ledger.totals()["eval"]
    assert [r.text for r in batched] == [r.text for r in online]
    assert all(r.ok and not r.cached for r in batched)
    assert server.stats["batches"] == 1 and server.stats["requests"] < 10  # no online call went out
    assert totals["batch_calls"] == totals["calls"] == 40 and online_totals["batch_calls"] == 0
    for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        assert totals[k] == online_totals[k]
    assert totals["usd"] == pytest.approx(online_totals["usd"] / 2)
    assert [r["event"] for r in _records(tmp_path / "batch")] == ["created", "done"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_partially_failed_batch_and_malformed_results_lines_are_retried_never_scored(
        sim_server, tmp_path, provider):
    reqs = [_ask(i) for i in range(60)]
    server = sim_server(fault_rate=0.3, seed=3, fault_kinds=("server_error", "truncated", "malformed"))
    with _batch_pool(tmp_path / "retry", server, provider) as pool:
        got = pool.map(reqs)
        stats = pool.stats
    assert all(r.ok for r in got)
    assert [r.text for r in got] == [expected_text([{"role": "system", "content": "Answer briefly."},
                                                    {"role": "user", "content": f"question {i}"}])
                                     for i in range(60)]
    assert stats["errors"].get("server_error", 0) > 0 and stats["errors"].get("unfinished", 0) > 0
    assert stats["batches"] == server.stats["batches"] > 1
    assert max(r.attempts for r in got) > 1

    no_retry = sim_server(fault_rate=0.3, seed=3, fault_kinds=("server_error",))
    with _batch_pool(tmp_path / "no_retry", no_retry, provider, max_retries=0) as pool:
        once = pool.map(reqs)
        totals = pool.ledger.totals()["eval"]
    failed = [r for r in once if not r.ok]
    assert failed and all(r.text is None and r.error == "server_error" for r in failed)
    assert totals["calls"] == len(once) - len(failed)  # only answers are charged


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_expiring_batch_is_resubmitted_only_for_its_unfinished_items(sim_server, tmp_path, provider):
    # a batch's items finish evenly over 1 s and it expires after 0.35 s, so each batch finishes
    # only its first items; batches of two or fewer never finish and their items fail as unfinished
    server = sim_server(batch_delay_s=1.0, batch_expire_s=0.35)
    with _batch_pool(tmp_path, server, provider, max_retries=6) as pool:
        got = pool.map([_ask(i) for i in range(10)])
    created = server.batches.created
    assert len(created) == 7  # the first try and six retries
    for (batch_id, ids), (_, next_ids) in zip(created, created[1:]):
        batch = server.batches.batches[batch_id]
        finished = {i.custom_id for i in batch.items if batch.state(i, time.time()) == "succeeded"}
        assert set(next_ids) == set(ids) - finished
    ok = [r for r in got if r.ok]
    assert len(ok) == 8 and all(r.error == "unfinished" and r.text is None for r in got if not r.ok)
    assert {r.text for r in ok} <= {expected_text([{"role": "system", "content": "Answer briefly."},
                                                   {"role": "user", "content": f"question {i}"}])
                                    for i in range(10)}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_budget_counts_batches_in_flight(sim_server, tmp_path, provider):
    server = sim_server(batch_delay_s=1.0)
    with _batch_pool(tmp_path / "probe", sim_server(), provider) as pool:
        pool.map([_ask(i) for i in range(10)])
    reserve = _records(tmp_path / "probe")[0]["reserved_usd"]

    with _batch_pool(tmp_path / "run", server, provider, budget_usd=1.5 * reserve) as pool:
        first = [pool.submit(_ask(i)) for i in range(10)]
        while not _records(tmp_path / "run"):
            time.sleep(0.01)
        assert pool.ledger.spent_usd() == 0.0  # nothing is charged yet: the batch is in flight
        second = pool.map([_ask(i) for i in range(10, 20)])
        assert all(f.result().ok for f in first)
    assert all(r.error == "budget_exceeded" for r in second)
    assert server.stats["batches"] == 1


def test_rl_stages_stay_online_and_stage_modes_override_the_mode(sim_server, tmp_path):
    server = sim_server()
    with _batch_pool(tmp_path, server, "openai", stage_modes={"core_alone": "online"}) as pool:
        pool.map([_ask(i, stage="sample.core_alone") for i in range(3)]
                 + [_ask(i, stage="sample") for i in range(3, 6)])
        totals = pool.ledger.totals()
    assert totals["sample.core_alone"]["batch_calls"] == 0 and totals["sample"]["batch_calls"] == 3
    with make_pool(tmp_path / "rl", {"core": endpoint(server)}, mode="batch") as pool:  # no batch log: RL
        pool.map([_ask(i, stage="rl") for i in range(3)])
        assert pool.ledger.totals()["rl"]["batch_calls"] == 0
    with pytest.raises(UserError, match="api.stage_modes.eval is 'later'; choose online or batch"):
        _batch_pool(tmp_path / "bad", server, "openai", stage_modes={"eval": "later"})


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_killed_batch_run_reattaches_and_never_submits_the_same_work_twice(sim_server, tmp_path, provider):
    n = 30
    server = sim_server(batch_delay_s=1.5)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    base = endpoint(server, provider).base_url
    child = subprocess.Popen([sys.executable, str(HERE / "resume_client.py"), base, str(run_dir), str(n), "batch",
                              provider], env=env)
    deadline = time.monotonic() + 60
    while not _records(run_dir):
        assert child.poll() is None, "the client finished or died before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert server.stats["batches"] == 1 and not (run_dir / "ledger.jsonl").read_text()

    with _batch_pool(run_dir, server, provider) as pool:
        results = pool.map(requests_for(n))
        totals = pool.ledger.totals()["sample"]
    assert all(r.ok for r in results)
    assert [r.text for r in results] == [
        expected_text([{"role": "user", "content": f"resume question {i}"}]) for i in range(n)]
    assert server.stats["batches"] == 1  # re-attached: the work went out once
    assert totals["calls"] == totals["batch_calls"] == n
    assert [r["event"] for r in _records(run_dir)] == ["created", "done"]


def test_a_pool_closed_while_its_batch_runs_leaves_it_recorded_for_the_next_run(sim_server, tmp_path):
    server = sim_server(batch_delay_s=0.5)
    with _batch_pool(tmp_path, server, "anthropic") as pool:
        futures = [pool.submit(_ask(i)) for i in range(5)]
        while not _records(tmp_path):
            time.sleep(0.01)
    assert all(f.result().error == "batch_pending" for f in futures)
    with _batch_pool(tmp_path, server, "anthropic") as pool:
        assert all(r.ok for r in pool.map([_ask(i) for i in range(5)]))
    assert server.stats["batches"] == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("api-batch")]


def test_a_damaged_batch_record_is_one_clear_error_and_a_torn_tail_is_dropped(sim_server, tmp_path):
    server = sim_server()
    (tmp_path / "batches.jsonl").write_text('{"event": "created", "id": "b1"')  # torn by a crash
    with _batch_pool(tmp_path, server, "openai") as pool:
        assert pool.map([_ask(0)])[0].ok
    assert [r["event"] for r in _records(tmp_path)] == ["created", "done"]
    (tmp_path / "batches.jsonl").write_text("not json\n")
    with pytest.raises(UserError, match=r"batches.jsonl:1: not valid JSON"):
        _batch_pool(tmp_path, server, "openai")
