"""The loopback sim server: wire formats, errors, rate limit, latency and deterministic faults."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import requests

from exectune_jax import tokens
from exectune_jax.config import SimConfig
from exectune_jax.api.limits import TokenBucket
from exectune_jax.sim import server as server_module
from exectune_jax.sim.server import FAULT_KINDS, SimServer, fault_for, sim_base_url

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}


class Upper:
    """A tiny deterministic model: the last message, upper-cased, tagged with the seed."""

    def complete(self, messages, *, max_tokens, temperature, seed):
        return f"{messages[-1]['content'].upper()} seed {seed}"


@pytest.fixture
def server():
    servers = []

    def make(**kwargs):
        kwargs.setdefault("models", {"m": Upper()})
        s = SimServer(**kwargs)
        s.start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def chat(s, content="hi", seed=0, **extra):
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "seed": seed, **extra}
    return requests.post(s.url + "/v1/chat/completions", json=body, timeout=5)


def outcome(resp_or_exc) -> str:
    if isinstance(resp_or_exc, Exception):
        return type(resp_or_exc).__name__
    try:
        resp_or_exc.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError):
        return f"{resp_or_exc.status_code} bad body"
    return str(resp_or_exc.status_code)


def try_chat(s, content):
    try:
        return outcome(chat(s, content))
    except requests.RequestException as e:
        return outcome(e)


def test_tokens_count_words_and_punctuation_and_truncate_to_a_prefix():
    assert tokens.count("What is 12 + 30?") == 6
    assert tokens.count("") == 0
    assert tokens.truncate("What is 12 + 30?", 3) == "What is 12"
    assert tokens.truncate("a b", 5) == "a b" and tokens.truncate("a b", 0) == ""
    assert tokens.count_messages([{"role": "user", "content": "a b"}]) == 2 + tokens.MESSAGE_OVERHEAD


def test_fault_draws_are_pure_and_hit_the_requested_rate_with_every_kind():
    draws = [fault_for(3, "digest", k, 0.3, FAULT_KINDS) for k in range(20000)]
    assert draws == [fault_for(3, "digest", k, 0.3, FAULT_KINDS) for k in range(20000)]
    counts = Counter(d for d in draws if d)
    assert abs(sum(counts.values()) / 20000 - 0.3) < 0.015
    assert set(counts) == set(FAULT_KINDS) and min(counts.values()) > 800
    assert not any(fault_for(3, "digest", k, 0.0, FAULT_KINDS) for k in range(1000))


def test_a_bodys_fault_sequence_depends_on_seed_and_arrival_count_not_on_other_traffic(server):
    kinds = ("server_error", "truncated", "malformed")  # the fast kinds
    a, b = server(fault_rate=0.5, seed=1, fault_kinds=kinds), server(fault_rate=0.5, seed=1, fault_kinds=kinds)
    seq_a = [try_chat(a, "body A") for _ in range(12)]
    seq_b = []
    for i in range(12):
        try_chat(b, f"other traffic {i}")
        seq_b.append(try_chat(b, "body A"))
    assert seq_a == seq_b and len(set(seq_a)) > 1
    c = server(fault_rate=0.5, seed=2, fault_kinds=kinds)
    assert [try_chat(c, "body A") for _ in range(12)] != seq_a


def test_a_faulted_body_gets_the_same_answer_when_it_finally_gets_through(server):
    clean = server()
    faulty = server(fault_rate=0.6, fault_kinds=("server_error", "truncated"))
    want = chat(clean, "same question", seed=4).json()["choices"][0]["message"]["content"]
    for _ in range(30):
        resp = chat(faulty, "same question", seed=4)
        if outcome(resp) == "200":
            break
    assert resp.json()["choices"][0]["message"]["content"] == want == "SAME QUESTION seed 4"
    assert sum(faulty.stats["faults"].values()) >= 1


def test_disconnect_and_timeout_faults_drop_the_connection(server):
    with pytest.raises(requests.ConnectionError):
        chat(server(fault_rate=0.999999, fault_kinds=("disconnect",)))
    s = server(fault_rate=0.999999, fault_kinds=("timeout",), hang_s=0.3)
    with pytest.raises(requests.Timeout):
        requests.post(s.url + "/v1/chat/completions", timeout=0.1,
                      json={"model": "m", "messages": [{"role": "user", "content": "t"}]})


class StoppedClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_rate_limit_answers_429_with_retry_after_then_lets_the_request_through(server):
    s = server(rpm=600, burst=1)  # one per 100 ms
    clock = StoppedClock()
    s.limiter = TokenBucket(s.limiter.rate, s.limiter.capacity, clock=clock, sleep=clock.sleep)
    assert chat(s).status_code == 200
    limited = chat(s)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    wait_ms = int(limited.headers["retry-after-ms"])
    assert wait_ms == 100 and limited.headers["retry-after"] == "1"
    clock.sleep(0.099)
    assert chat(s).status_code == 429  # not yet
    clock.sleep(0.001)
    assert chat(s).status_code == 200
    assert s.stats["rate_limited"] == 2 and s.stats["ok"] == 2


def test_latency_delays_each_answer(server, monkeypatch):
    waits = []  # what the server slept on the way to each answer
    monkeypatch.setattr(server_module, "time", SimpleNamespace(sleep=waits.append))
    s = server(latency_ms=150)
    assert chat(s).status_code == 200 and chat(s).status_code == 200
    assert waits == [0.15, 0.15]


@pytest.mark.parametrize("path,body,headers,status,needle", [
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, {},
     404, "does not exist"),
    ("/v1/chat/completions", {"model": "m", "messages": []}, {}, 400, "messages"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "foo": 1}, {},
     400, "Unrecognized request argument supplied: foo"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True},
     {}, 400, "stream"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, {},
     400, "anthropic-version"),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     ANTHROPIC_HEADERS, 400, "messages.0.role"),
    ("/v1/messages", {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
     ANTHROPIC_HEADERS, 404, "does not exist"),
    ("/v2/other", {}, {}, 404, "no route"),
])
def test_invalid_requests_get_the_formats_error_body(server, path, body, headers, status, needle):
    resp = requests.post(server().url + path, json=body, headers=headers, timeout=5)
    assert resp.status_code == status
    data = resp.json()
    assert needle in data["error"]["message"]
    if path == "/v1/messages":
        assert data["type"] == "error" and data["error"]["type"].endswith("_error")


def test_missing_api_key_is_refused_when_the_server_requires_one(server):
    s = server(api_key="k-123")
    assert chat(s).status_code == 401
    ok = requests.post(s.url + "/v1/chat/completions", headers={"authorization": "Bearer k-123"}, timeout=5,
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert ok.status_code == 200


def test_both_formats_give_the_model_the_same_messages_and_seed_zero_without_openai_seed(server):
    s = server()
    openai = chat(s, "q", seed=0).json()["choices"][0]["message"]["content"]
    anthropic = requests.post(s.url + "/v1/messages", headers=ANTHROPIC_HEADERS, timeout=5, json={
        "model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}],
    }).json()["content"][0]["text"]
    assert openai == anthropic == "Q seed 0"


def test_default_registry_serves_the_simulated_models():
    with SimServer() as s:
        for model in ("sim-core", "sim-teacher", "sim-core-strong"):
            body = {"model": model, "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
            resp = requests.post(s.url + "/v1/chat/completions", json=body, timeout=10)
            assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]


def test_from_config_and_base_urls():
    s = SimServer.from_config(SimConfig(latency_ms=5, rpm=60, fault_rate=0.1, seed=9))
    assert (s.latency_s, s.fault_rate, s.seed, s.limiter.rate) == (0.005, 0.1, 9, 1.0)
    assert sim_base_url("http://h:1", "openai") == "http://h:1/v1"
    assert sim_base_url("http://h:1", "anthropic") == "http://h:1"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_sim_command_prints_its_url_serves_and_exits_cleanly_on_interrupt(stop):
    # started with SIGINT ignored, as a script's background job is: it must still stop on it
    command = [sys.executable, "-m", "exectune_jax.cli", "serve-sim", "sim.latency_ms=1"]
    proc = subprocess.Popen(["bash", "-c", 'trap "" INT; exec "$@"', "bash", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("sim server listening on http://127.0.0.1:"), line
        root = line.split()[-1]
        body = {"model": "sim-core", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
        assert requests.post(root + "/v1/chat/completions", json=body, timeout=10).status_code == 200
    finally:
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.dumps(err).count("Traceback") == 0


def test_serve_sim_judges_in_the_fixed_form_and_keeps_the_ground_truth_to_itself(tmp_path):
    from exectune_jax.data import tasks
    from exectune_jax.data.tasks.arith import parse_problem
    from exectune_jax.gcop import follow, prompts
    from exectune_jax.gcop.strategy import render
    from exectune_jax.sim.teacher import atomic
    from exectune_jax.sim.truth import read_truth

    problem = tasks.get("arith", n_train=0, n_validation=0, n_test=1).problems("test")[0]
    strategies = ["<strategy>\n1. Think about the story.\n</strategy>",  # not followable
                  render(atomic(parse_problem(problem.prompt)))]
    truth_log = tmp_path / "truth.jsonl"
    command = [sys.executable, "-m", "exectune_jax.cli", "serve-sim", f"sim.truth_log={truth_log}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        root = proc.stdout.readline().split()[-1]
        exchanges = []
        for strategy in strategies:
            messages = prompts.core_messages(problem, "math", strategy)
            resp = requests.post(root + "/v1/chat/completions", timeout=10,
                                 json={"model": "sim-core", "messages": messages, "seed": 0})
            assert "followed" not in json.dumps(resp.json()).lower().replace("follow the strategy", "")
            reply = resp.json()["choices"][0]["message"]["content"]
            judge = prompts.judge_follow_messages(problem.prompt, strategy, reply)
            answer = requests.post(root + "/v1/messages", headers=ANTHROPIC_HEADERS, timeout=10, json={
                "model": "sim-judge", "max_tokens": 64, "system": judge[0]["content"],
                "messages": [judge[1]]}).json()
            exchanges.append((follow.exchange_digest(messages, reply),
                              follow.parse_judge_reply(answer["content"][0]["text"])))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    truth = read_truth(truth_log)
    assert len(truth) == len(strategies)  # one record per guided core reply; none for the judge
    for digest, parsed in exchanges:
        assert parsed is not None and parsed[1]
        assert (parsed[0] == "yes") == truth[digest]
    assert [truth[d] for d, _ in exchanges] == [False, True]
    carried = [json.loads(line)["carried_out"] for line in truth_log.read_text().splitlines()]
    assert carried == [0, len(parse_problem(problem.prompt).ops)]  # how far it got, in the log only


def test_another_sim_seed_draws_other_teacher_samples_and_keeps_the_greedy_core():
    """sim.seed seeds sampled answers (a study's seeds get different teacher proposals); at
    temperature 0 the world is one function of the prompt, whatever the seed."""
    from exectune_jax.data import tasks
    from exectune_jax.gcop import prompts

    problems = tasks.get("arith", n_train=8, n_validation=2, n_test=2).problems("train")

    def answers(seed: int, model: str, temperature: float, messages_of) -> list[str]:
        with SimServer(seed=seed) as s:
            return [requests.post(s.url + "/v1/chat/completions", timeout=10, json={
                "model": model, "messages": messages_of(p), "temperature": temperature, "seed": 0,
                "max_tokens": 512}).json()["choices"][0]["message"]["content"] for p in problems]

    def teacher(p):
        return prompts.teacher_propose_messages(p, "math")

    def core(p):
        return prompts.core_messages(p, "math", None)

    assert answers(0, "sim-teacher", 1.0, teacher) == answers(0, "sim-teacher", 1.0, teacher)
    assert answers(0, "sim-teacher", 1.0, teacher) != answers(1, "sim-teacher", 1.0, teacher)
    assert answers(0, "sim-core", 0.0, core) == answers(1, "sim-core", 0.0, core)


def test_the_served_core_runs_the_configured_world(tmp_path):
    """sim.world.follow_compound=0: through the real loopback server (and `exectune serve-sim`),
    a strategy with a compound step is never followed to the end; in the default world some are."""
    import random

    from exectune_jax.data import tasks
    from exectune_jax.data.tasks.arith import parse_problem
    from exectune_jax.gcop import prompts
    from exectune_jax.gcop.strategy import render
    from exectune_jax.sim.teacher import write
    from exectune_jax.sim.truth import read_truth
    from exectune_jax.world import WORLD, summary_of

    problems = tasks.get("arith", n_train=0, n_validation=0, n_test=30).problems("test")
    written = [(p, write(parse_problem(p.prompt), "compound", random.Random(i)))
               for i, p in enumerate(problems)]
    bodies = [{"model": "sim-core", "messages": prompts.core_messages(p, "math", render(steps))}
              for p, steps in written if steps]

    def followed(name: str, **world) -> list[bool]:
        log = tmp_path / f"{name}.jsonl"
        with SimServer.from_config(SimConfig(world=world, truth_log=str(log))) as s:
            for body in bodies:
                requests.post(s.url + "/v1/chat/completions", json=body, timeout=10).raise_for_status()
        return list(read_truth(log).values())

    default_followed = followed("default")
    assert len(bodies) >= 20 and any(default_followed)
    body = bodies[default_followed.index(True)]  # followed in the default world, never with 0
    assert followed("never", follow_compound=0.0) == [False] * len(bodies)
    command = [sys.executable, "-m", "exectune_jax.cli", "serve-sim", "sim.world.follow_compound=0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        root = proc.stdout.readline().split()[-1]
        lines = [proc.stdout.readline() for _ in range(3)]
        reply = requests.post(root + "/v1/chat/completions", json=body, timeout=10).json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    world = json.loads(next(line for line in lines if "world:" in line).split("world: ", 1)[1])
    assert world == summary_of({"follow_compound": 0}) and world["hash"] != WORLD.hash
    with SimServer.from_config(SimConfig(world={"follow_compound": 0})) as s:
        never = requests.post(s.url + "/v1/chat/completions", json=body, timeout=10).json()
    with SimServer.from_config(SimConfig()) as s:
        default = requests.post(s.url + "/v1/chat/completions", json=body, timeout=10).json()
    assert reply["choices"][0]["message"] == never["choices"][0]["message"] != default["choices"][0]["message"]
