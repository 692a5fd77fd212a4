"""serve-sim's batch APIs on the wire: Anthropic Message Batches and the OpenAI Batch and Files APIs,
driven with raw HTTP requests as a provider's own client would send them."""

from __future__ import annotations

import json
import time

import pytest
import requests

from exectune_jax.api import batches as client
from exectune_jax.api import providers
from exectune_jax.config import EndpointConfig
from exectune_jax.sim.server import SimServer, sim_base_url

HEADERS = {"anthropic-version": providers.ANTHROPIC_VERSION}


class Echo:
    def complete(self, messages, *, max_tokens, temperature, seed):
        return f"echo {messages[-1]['content']}"


@pytest.fixture
def server_factory():
    servers = []

    def make(**kwargs):
        server = SimServer(models={"sim-core": Echo()}, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


def _messages_params(i: int, model: str = "sim-core") -> dict:
    return {"model": model, "max_tokens": 32,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": f"q{i}"}]}


def _chat_body(i: int, model: str = "sim-core") -> dict:
    return {"model": model, "max_tokens": 32,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"}]}


def _until(check, what: str, limit_s: float = 30.0):
    deadline = time.monotonic() + limit_s
    while not (got := check()):
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)
    return got


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line]


def _anthropic_create(server, reqs) -> dict:
    resp = requests.post(server.url + "/v1/messages/batches", json={"requests": reqs}, headers=HEADERS, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _anthropic_get(server, batch_id: str, tail: str = "") -> requests.Response:
    return requests.get(f"{server.url}/v1/messages/batches/{batch_id}{tail}", headers=HEADERS, timeout=5)


def _openai_create(server, lines: list[dict]) -> dict:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    up = requests.post(server.url + "/v1/files", data={"purpose": "batch"},
                       files={"file": ("in.jsonl", data, "application/jsonl")}, timeout=5)
    assert up.status_code == 200 and up.json()["purpose"] == "batch" and up.json()["bytes"] == len(data)
    resp = requests.post(server.url + "/v1/batches", json={
        "input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}, timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _openai_get(server, batch_id: str) -> dict:
    return requests.get(f"{server.url}/v1/batches/{batch_id}", timeout=5).json()


def _file(server, file_id: str) -> list[dict]:
    return _jsonl(requests.get(f"{server.url}/v1/files/{file_id}/content", timeout=5).text)


def test_anthropic_batch_goes_in_progress_then_ended_with_results_by_custom_id(server_factory):
    server = server_factory(batch_delay_s=0.3)
    reqs = [{"custom_id": f"req-{i}", "params": _messages_params(i)} for i in (2, 0, 1)]
    batch = _anthropic_create(server, reqs)
    assert batch["type"] == "message_batch" and batch["id"].startswith("msgbatch_")
    assert batch["processing_status"] == "in_progress" and batch["results_url"] is None
    assert batch["request_counts"] == {"processing": 3, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    assert _anthropic_get(server, batch["id"], "/results").status_code == 400  # not ended yet
    ended = _until(lambda: (b := _anthropic_get(server, batch["id"]).json())["processing_status"] == "ended" and b,
                   "ended")
    assert ended["request_counts"]["succeeded"] == 3 and ended["ended_at"]
    rows = _jsonl(requests.get(ended["results_url"], headers=HEADERS, timeout=5).text)
    assert [r["custom_id"] for r in rows] == ["req-0", "req-1", "req-2"]  # not submission order
    for r in rows:
        assert r["result"]["type"] == "succeeded"
        message = r["result"]["message"]
        assert message["type"] == "message" and message["content"][0]["text"] == f"echo q{r['custom_id'][-1]}"
    usage = [r["result"]["message"]["usage"] for r in rows]
    assert sum(u["cache_creation_input_tokens"] for u in usage) == 6  # "Be brief." + overhead, once
    assert sum(u["cache_read_input_tokens"] for u in usage) == 12


def test_openai_batch_validates_runs_and_completes_with_an_output_file(server_factory):
    server = server_factory(batch_delay_s=0.3)
    lines = [{"custom_id": f"task-{i}", "method": "POST", "url": "/v1/chat/completions", "body": _chat_body(i)}
             for i in range(3)]
    batch = _openai_create(server, lines)
    assert batch["object"] == "batch" and batch["status"] == "validating" and batch["output_file_id"] is None
    assert _openai_get(server, batch["id"])["status"] == "in_progress"
    done = _until(lambda: (b := _openai_get(server, batch["id"]))["status"] == "completed" and b, "completed")
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert done["error_file_id"] is None and done["completed_at"] is not None
    rows = _file(server, done["output_file_id"])
    assert sorted(r["custom_id"] for r in rows) == ["task-0", "task-1", "task-2"]
    for r in rows:
        assert r["error"] is None and r["response"]["status_code"] == 200
        body = r["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == f"echo q{r['custom_id'][-1]}"
    assert sum(r["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"] for r in rows) == 12


def test_per_request_errors_are_reported_per_item_in_both_formats(server_factory):
    server = server_factory()
    batch = _anthropic_create(server, [{"custom_id": "good", "params": _messages_params(0)},
                                       {"custom_id": "bad", "params": _messages_params(1, model="nope")}])
    ended = _until(lambda: (b := _anthropic_get(server, batch["id"]).json())["processing_status"] == "ended" and b,
                   "ended")
    rows = {r["custom_id"]: r["result"] for r in _jsonl(_anthropic_get(server, batch["id"], "/results").text)}
    assert ended["request_counts"]["errored"] == 1
    assert rows["good"]["type"] == "succeeded"
    assert rows["bad"] == {"type": "errored", "error": {"type": "error", "error": {
        "type": "not_found_error", "message": "model 'nope' does not exist"}}}

    lines = [{"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": _chat_body(0, model=m)}
             for c, m in (("good", "sim-core"), ("bad", "nope"))]
    done = _until(lambda: (b := _openai_get(server, _openai_create(server, lines)["id"]))["status"] == "completed"
                  and b, "completed")
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    (err,) = _file(server, done["error_file_id"])
    assert err["custom_id"] == "bad" and err["response"]["status_code"] == 404
    assert err["response"]["body"]["error"]["code"] == "model_not_found"


def test_expiry_ends_unfinished_items_as_expired_in_both_formats(server_factory):
    # 10 items finishing evenly over 1 s, expiring at 0.35 s: the first 3 finish
    server = server_factory(batch_delay_s=1.0, batch_expire_s=0.35)
    batch = _anthropic_create(server, [{"custom_id": f"r{i}", "params": _messages_params(i)} for i in range(10)])
    ended = _until(lambda: (b := _anthropic_get(server, batch["id"]).json())["processing_status"] == "ended" and b,
                   "ended")
    assert ended["request_counts"] == {"processing": 0, "succeeded": 3, "errored": 0, "canceled": 0, "expired": 7}
    kinds = {r["custom_id"]: r["result"]["type"] for r in _jsonl(_anthropic_get(server, batch["id"], "/results").text)}
    assert sorted(c for c, k in kinds.items() if k == "succeeded") == ["r0", "r1", "r2"]

    lines = [{"custom_id": f"t{i}", "method": "POST", "url": "/v1/chat/completions", "body": _chat_body(i)}
             for i in range(10)]
    created = _openai_create(server, lines)
    done = _until(lambda: (b := _openai_get(server, created["id"]))["status"] not in ("validating", "in_progress")
                  and b, "ended")
    assert done["status"] == "expired" and done["expired_at"] is not None
    assert sorted(r["custom_id"] for r in _file(server, done["output_file_id"])) == ["t0", "t1", "t2"]
    errors = _file(server, done["error_file_id"])
    assert len(errors) == 7 and all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors)


def test_cancellation_passes_through_canceling_and_cancels_unfinished_items(server_factory):
    server = server_factory(batch_delay_s=5.0)
    batch = _anthropic_create(server, [{"custom_id": f"r{i}", "params": _messages_params(i)} for i in range(4)])
    cancel = requests.post(f"{server.url}/v1/messages/batches/{batch['id']}/cancel", headers=HEADERS, timeout=5).json()
    assert cancel["processing_status"] == "canceling" and cancel["cancel_initiated_at"]
    ended = _anthropic_get(server, batch["id"]).json()
    assert ended["processing_status"] == "ended" and ended["request_counts"]["canceled"] == 4
    assert {r["result"]["type"] for r in _jsonl(_anthropic_get(server, batch["id"], "/results").text)} == {"canceled"}

    created = _openai_create(server, [{"custom_id": "t", "method": "POST", "url": "/v1/chat/completions",
                                       "body": _chat_body(0)}])
    cancel = requests.post(f"{server.url}/v1/batches/{created['id']}/cancel", timeout=5).json()
    assert cancel["status"] == "cancelling"
    assert _openai_get(server, created["id"])["status"] == "cancelled"


def test_malformed_batch_inputs_are_refused_as_the_real_apis_refuse_them(server_factory):
    server = server_factory()
    dup = requests.post(server.url + "/v1/messages/batches", headers=HEADERS, timeout=5, json={"requests": [
        {"custom_id": "same", "params": _messages_params(0)}, {"custom_id": "same", "params": _messages_params(1)}]})
    assert dup.status_code == 400 and dup.json()["error"]["type"] == "invalid_request_error"
    bad_id = requests.post(server.url + "/v1/messages/batches", headers=HEADERS, timeout=5, json={"requests": [
        {"custom_id": "has space", "params": _messages_params(0)}]})
    assert bad_id.status_code == 400
    failed = _openai_create(server, [{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions",
                                      "body": _chat_body(0)}])
    assert failed["status"] == "failed" and failed["errors"]["data"][0]["line"] == 1
    wrong_purpose = requests.post(server.url + "/v1/files", data={"purpose": "fine-tune"},
                                  files={"file": ("a.jsonl", b"{}\n")}, timeout=5)
    assert wrong_purpose.status_code == 400


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_malformed_results_file_leaves_its_garbled_items_unanswered_never_scored(server_factory, provider):
    server = server_factory(fault_rate=0.5, seed=2, fault_kinds=("truncated",))
    ep = EndpointConfig(provider=provider, base_url=sim_base_url(server.url, provider), model="sim-core",
                        timeout_s=5.0)
    bodies = [(f"id{i}", providers.request_body(ep, [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": f"q{i}"}],
                                                max_tokens=16, temperature=0.0, seed=0)) for i in range(20)]
    batch_id = client.create(ep, bodies)
    status = _until(lambda: (s := client.status(ep, batch_id)).ended and s, "ended")
    got = client.results(ep, status)
    garbled = server.stats["faults"]["truncated"]
    assert 0 < garbled < 20 and len(got) == 20 - garbled
    assert all(isinstance(c, providers.Completion) and c.text == f"echo q{cid[2:]}" for cid, c in got.items())
