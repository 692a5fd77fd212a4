"""The call pool against the loopback sim server, through the real HTTP client (nothing mocked)."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from loopback import endpoint, expected_text, make_pool
from resume_client import CONCURRENCY, requests_for

from exectune_jax.api import limits
from exectune_jax.api import pool as pool_module
from exectune_jax.api.cache import Cache
from exectune_jax.api.pool import BudgetExceeded, Request, open_pool
from exectune_jax.config import Config
from exectune_jax.errors import UserError
from exectune_jax.sim import serving

HERE = Path(__file__).parent


def _ask(i: int, stage: str = "sample", sample_index: int = 0) -> Request:
    return Request("core", [("system", "Answer briefly."), ("user", f"question {i}")],
                   sample_index=sample_index, stage=stage)


def test_2000_requests_under_30pct_faults_and_429s_match_a_fault_free_run_exactly(sim_server, tmp_path):
    n = 2000
    reqs = [_ask(i, stage=("sample", "eval")[i % 2], sample_index=i % 3) for i in range(n)]

    clean_server = sim_server()
    with make_pool(tmp_path / "clean", {"core": endpoint(clean_server)}, concurrency=32) as pool:
        clean = pool.map(reqs)
        clean_totals = pool.ledger.totals()

    server = sim_server(fault_rate=0.3, seed=7, rpm=200 * 60, burst=20, hang_s=2.5)
    # 64 workers race for a 20-request bucket, so on a loaded machine one request can lose that
    # race to a 429 more than twenty times in a row (seen in a full suite run): the retry budget
    # is set far past that, since what this test pins is that no answer is lost, duplicated or
    # changed, not how many retries a rate limit takes
    with make_pool(tmp_path / "faulty", {"core": endpoint(server, timeout_s=2.0)}, concurrency=64,
                   max_retries=100) as pool:
        t0 = time.monotonic()
        got = pool.map(reqs)
        seconds = time.monotonic() - t0
        totals, stats = pool.ledger.totals(), pool.stats
    served = server.stats

    assert all(r.ok for r in got) and all(r.ok for r in clean)
    assert [r.text for r in got] == [r.text for r in clean]
    assert [r.text for r in got] == [expected_text([{"role": "system", "content": "Answer briefly."},
                                                    {"role": "user", "content": f"question {i}"}],
                                                   seed=i % 3) for i in range(n)]
    # none lost or duplicated: the server answered each request once and the ledger billed it
    # once. Only a reply slower than the client's timeout is answered twice (a loaded machine
    # can delay a normal one past 2 s): the client cannot know it was served, so it retries, as
    # it must; those are the client's timeouts beyond the server's injected hangs.
    slow = stats["errors"].get("timeout", 0) - served["faults"].get("timeout", 0)
    assert slow >= 0 and served["ok"] == n + slow
    assert totals.keys() == clean_totals.keys()
    # Which stage's call first delivers the shared system prompt (and so pays no cached read) is
    # a matter of thread timing: cache reads, and the USD they save, agree over all stages.
    timed = ("cache_read_tokens", "usd")
    for stage, t in totals.items():  # float sums in a different order: equal to rounding
        assert {k: v for k, v in t.items() if k not in timed} == {
            k: pytest.approx(v, rel=1e-9) for k, v in clean_totals[stage].items() if k not in timed}
    for k in timed:
        assert sum(t[k] for t in totals.values()) == pytest.approx(
            sum(t[k] for t in clean_totals.values()), rel=1e-9)
    assert len((tmp_path / "faulty" / "ledger.jsonl").read_text().splitlines()) == n
    # retries counted: every failed attempt the server saw was retried, and nothing else was
    injected = sum(served["faults"].values())
    assert injected > 0.2 * n and served["rate_limited"] > 0
    assert stats["retries"] == injected + served["rate_limited"] + slow
    assert stats["calls"] == served["requests"] == sum(r.attempts for r in got)
    assert stats["failures"] == {} and stats["errors"]["rate_limit"] == served["rate_limited"]
    print(f"2000 requests under faults: {seconds:.1f}s, {stats['retries']} retries, "
          f"faults {served['faults']}, 429s {served['rate_limited']}")


def test_killed_run_resumes_and_its_cached_half_costs_nothing(sim_server, tmp_path):
    n = 200
    server = sim_server(latency_ms=20)
    run_dir = tmp_path / "run"
    ledger_path = run_dir / "ledger.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, str(HERE / "resume_client.py"), server.url + "/v1",
                              str(run_dir), str(n)], env=env)
    deadline = time.monotonic() + 60
    while not (ledger_path.exists() and len(ledger_path.read_bytes().splitlines()) >= n // 2):
        assert child.poll() is None, "the client finished or died before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()

    paid_before = len(ledger_path.read_text().splitlines())
    with Cache(run_dir / "calls.sqlite") as cache:
        cached_before = len(cache)
    assert n // 2 - CONCURRENCY <= cached_before < n
    # ledger lines go before cache rows: at most the calls in flight were paid but not cached
    assert 0 <= paid_before - cached_before <= CONCURRENCY
    requests_before = server.stats["requests"]

    with make_pool(run_dir, {"core": endpoint(server)}, concurrency=CONCURRENCY) as pool:
        results = pool.map(requests_for(n))
        totals = pool.ledger.totals()["sample"]
    replays = [r for r in results if r.cached]
    assert all(r.ok for r in results)
    assert [r.text for r in results] == [
        expected_text([{"role": "user", "content": f"resume question {i}"}]) for i in range(n)]
    assert len(replays) == cached_before
    assert all(r.usd == 0.0 and r.attempts == 0 for r in replays)
    assert server.stats["requests"] - requests_before == n - cached_before
    assert totals["cached_calls"] == cached_before and totals["replayed_usd"] > 0
    assert totals["calls"] == paid_before + n - cached_before
    assert sum(r.usd for r in results) == pytest.approx(
        totals["usd"] * (n - cached_before) / totals["calls"])


def test_budget_cap_stops_new_calls_mid_run_and_tells_the_caller(sim_server, tmp_path):
    n = 200
    server = sim_server(latency_ms=5)
    budget = 40 * 2.4e-5  # about 40 answers' worth at sim-core prices
    with make_pool(tmp_path, {"core": endpoint(server)}, concurrency=4, budget_usd=budget) as pool:
        results = pool.map([_ask(i) for i in range(n)])
        ok = [r for r in results if r.ok]
        stopped = [r for r in results if not r.ok]
        assert 0 < len(ok) < n
        assert {r.error for r in stopped} == {"budget_exceeded"}
        assert all(r.attempts == 0 and r.text is None for r in stopped)
        # no call was started once the cap was reached: every call the server saw was paid for
        assert server.stats["requests"] == len(ok)
        assert pool.ledger.spent_usd() <= budget
        assert pool.stopped and "budget_usd" in pool.stop_reason
        # the stop names what was paid and what calls in flight held back, which together
        # reached the cap (the paid part alone may be below it)
        stop = re.search(r"paid \$([\d.]+), with \$([\d.]+) reserved for calls in flight and "
                         r"\$([\d.]+) for the next", pool.stop_reason)
        assert stop and float(stop[1]) <= budget < sum(map(float, stop.groups()))
        late = pool.submit(_ask(n + 1)).result()
        assert late.error == "budget_exceeded" and server.stats["requests"] == len(ok)
        assert pool.submit(_ask(0)).result().cached  # replays are free, so they still work
        with pytest.raises(BudgetExceeded, match="raise api.budget_usd"):
            pool.raise_if_stopped()


def test_no_file_a_run_writes_contains_the_api_key(sim_server, tmp_path, monkeypatch):
    key, wrong = "sk-" + secrets.token_hex(16), "sk-" + secrets.token_hex(16)
    monkeypatch.setenv("EXECTUNE_TEST_KEY", key)
    monkeypatch.setenv("EXECTUNE_WRONG_KEY", wrong)
    server = sim_server(api_key=key, fault_rate=0.3, hang_s=1.0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    handler = logging.FileHandler(run_dir / "run.log")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        endpoints = {"core": endpoint(server, api_key_env="EXECTUNE_TEST_KEY", timeout_s=0.5),
                     "judge": endpoint(server, provider="anthropic", api_key_env="EXECTUNE_WRONG_KEY")}
        with make_pool(run_dir, endpoints, concurrency=8) as pool:
            results = pool.map([_ask(i) for i in range(60)]
                               + [replace(_ask(i), endpoint="judge") for i in range(5)])
            pool.checkpoint()
            with open(run_dir / "metrics.jsonl", "w") as f:
                f.write(json.dumps(pool.stats) + "\n")
                for r in results:
                    f.write(json.dumps(r.__dict__) + "\n")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()

    assert all(r.ok for r in results[:60]) and server.stats["ok"] >= 60  # the key was sent and used
    assert {r.error for r in results[60:]} == {"client_error"}  # the wrong key was refused
    log_text = (run_dir / "run.log").read_text()
    assert "retrying core" in log_text and "failed after 1 attempt" in log_text
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {"calls.sqlite", "ledger.jsonl", "ledger_totals.json", "metrics.jsonl", "run.log"} <= {
        p.name for p in written}
    for p in written:
        data = p.read_bytes()
        assert key.encode() not in data and wrong.encode() not in data, p.name


def test_other_4xx_errors_fail_at_once_without_retries(sim_server, tmp_path):
    server = sim_server()
    ep = endpoint(server)
    endpoints = {"core": replace(ep, model="gpt-4o-mini"),  # priced, but the server does not know it
                 "teacher": replace(ep, model="sim-teacher")}
    with make_pool(tmp_path, endpoints) as pool:
        missing = pool.submit(_ask(1)).result()
        bad = pool.submit(Request("teacher", [("user", "x")], temperature=5.0)).result()
    for r in (missing, bad):
        assert (r.ok, r.error, r.attempts, r.text) == (False, "client_error", 1, None)
    assert "does not exist" in missing.detail and "temperature" in bad.detail
    assert server.stats["requests"] == 2


def test_a_call_that_keeps_failing_ends_as_an_explicit_failure_not_an_empty_answer(sim_server, tmp_path):
    server = sim_server(fault_rate=0.999999, fault_kinds=("server_error",))
    with make_pool(tmp_path, {"core": endpoint(server)}, max_retries=2) as pool:
        r = pool.submit(_ask(1)).result()
        assert pool.stats["failures"] == {"server_error": 1}
    assert (r.ok, r.text, r.error, r.attempts, r.usd) == (False, None, "server_error", 3, 0.0)
    assert "503" in r.detail


def test_retry_after_is_honoured_so_a_rate_limited_call_succeeds_on_its_next_attempt(
        sim_server, tmp_path, monkeypatch):
    server = sim_server(rpm=300, burst=1)  # one request per 200 ms
    asked, slept = [], []  # the server's Retry-After as the pool read it; what the pool slept
    backoff = pool_module.backoff_delay
    monkeypatch.setattr(pool_module, "backoff_delay",
                        lambda *a: asked.append(a[3]) or backoff(*a))
    monkeypatch.setattr(pool_module, "time", SimpleNamespace(
        monotonic=time.monotonic, sleep=lambda s: slept.append(s) or time.sleep(s)))
    with make_pool(tmp_path, {"core": endpoint(server)}, concurrency=1, backoff_base_s=0.001) as pool:
        first = pool.submit(_ask(1)).result()
        second = pool.submit(_ask(2)).result()
    assert first.attempts == 1 and second.attempts == 2  # a 1 ms backoff would have met more 429s
    assert len(asked) == 1 and 0 < asked[0] <= 0.2
    assert len(slept) == 1 and slept[0] >= asked[0]  # the one wait before the retry: as asked


class WaitersClock:
    """Time that passes only while a thread waits: a wait ends `seconds` after the time its
    thread last read, and the clock shows the latest end reached (waits overlap, as real ones
    do)."""

    def __init__(self):
        self.t = 0.0
        self._read = threading.local()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self._read.t = self.t
            return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.t = max(self.t, getattr(self._read, "t", self.t) + seconds)


def test_client_side_rpm_limit_paces_calls_so_the_server_never_answers_429(
        sim_server, tmp_path, monkeypatch):
    clock = WaitersClock()  # the pool's rpm bucket on it; the server's limiter on its own clock
    made = limits.per_minute_bucket
    monkeypatch.setattr(pool_module, "per_minute_bucket", lambda per_minute: (
        (b := made(per_minute)) and limits.TokenBucket(b.rate, b.capacity, clock=clock,
                                                       sleep=clock.sleep)))
    # the server's limit is the client's own, on the same clock: no room for jitter is needed,
    # and 20 calls sent unpaced would meet 429s
    server = sim_server(rpm=1200, burst=20)
    server.limiter = limits.TokenBucket(20.0, 20.0, clock=clock, sleep=clock.sleep)
    with make_pool(tmp_path, {"core": endpoint(server)}, concurrency=16, rpm=1200) as pool:
        results = pool.map([_ask(i) for i in range(40)])
    assert all(r.ok and r.attempts == 1 for r in results)
    assert server.stats["rate_limited"] == 0
    assert clock.t == pytest.approx(1.0)  # 20 at once, then 20 more at 20 per second


def test_circuit_breaker_opens_after_repeated_failures_and_stops_calling(
        sim_server, tmp_path, monkeypatch):
    clock = WaitersClock()
    monkeypatch.setattr(pool_module, "CircuitBreaker", lambda threshold, cooldown_s: (
        limits.CircuitBreaker(threshold, cooldown_s, clock=clock)))
    server = sim_server(fault_rate=0.999999, fault_kinds=("server_error",))
    cfg = dict(concurrency=1, max_retries=0, circuit_breaker_failures=3, circuit_breaker_cooldown_s=0.3)
    with make_pool(tmp_path, {"core": endpoint(server)}, **cfg) as pool:
        errors = [pool.submit(_ask(i)).result().error for i in range(6)]
        assert errors == ["server_error"] * 3 + ["circuit_open"] * 3
        assert server.stats["requests"] == 3
        clock.sleep(0.29)
        assert pool.submit(_ask(9)).result().error == "circuit_open"  # still cooling down
        clock.sleep(0.02)
        assert pool.submit(_ask(10)).result().error == "server_error"  # the half-open probe
        assert pool.submit(_ask(11)).result().error == "circuit_open"
        assert pool.stats["breaker_trips"] == 2


def test_identical_requests_in_flight_are_paid_once(sim_server, tmp_path):
    server = sim_server(latency_ms=100)
    with make_pool(tmp_path, {"core": endpoint(server)}) as pool:
        a, b = pool.submit(_ask(1, stage="rl")), pool.submit(_ask(1, stage="eval"))
        ra, rb = a.result(), b.result()
        totals = pool.ledger.totals()
    assert server.stats["requests"] == 1
    assert ra.text == rb.text and not ra.cached and rb.cached and rb.usd == 0.0
    assert totals["rl"]["calls"] == 1 and totals["eval"]["cached_calls"] == 1


def test_anthropic_endpoints_work_through_the_pool(sim_server, tmp_path):
    server = sim_server()
    with make_pool(tmp_path, {"teacher": endpoint(server, provider="anthropic", model="sim-teacher")}) as pool:
        r = pool.submit(Request("teacher", [("system", "s"), ("user", "propose")])).result()
    assert r.ok and r.stop_reason == "end_turn" and r.input_tokens > 0 and r.usd > 0


def test_a_missing_key_variable_is_a_user_error_before_any_call(sim_server, tmp_path, monkeypatch):
    monkeypatch.delenv("EXECTUNE_UNSET_KEY", raising=False)
    server = sim_server()
    with make_pool(tmp_path, {"core": endpoint(server, api_key_env="EXECTUNE_UNSET_KEY")}) as pool:
        with pytest.raises(UserError, match="api.core.api_key_env names EXECTUNE_UNSET_KEY"):
            pool.submit(_ask(1))
        with pytest.raises(UserError, match="no endpoint 'judge' is configured"):
            pool.submit(replace(_ask(1), endpoint="judge"))
    assert server.stats["requests"] == 0


def test_open_pool_takes_the_sim_only_once_served_and_writes_into_run_dir(tmp_path):
    cfg = Config(run_dir=str(tmp_path))
    with pytest.raises(UserError, match=r'api.core.base_url is "sim".*sim.serving\(cfg\)'):
        open_pool(cfg, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before the run's files are opened
    with serving(cfg) as served, open_pool(served, tmp_path) as pool:
        core = pool.submit(Request("core", [("user", "What is 2 + 3?")], stage="eval")).result()
        teacher = pool.submit(Request("teacher", [("user", "Propose a strategy.")])).result()
    assert core.ok and teacher.ok and core.text and teacher.text
    assert (tmp_path / "calls.sqlite").exists() and (tmp_path / "ledger.jsonl").exists()
    assert json.loads((tmp_path / "ledger_totals.json").read_text())["stages"]["eval"]["calls"] == 1
