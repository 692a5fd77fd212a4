"""Provider conformance: request and response bodies against the providers' documented examples.

The JSON files in payloads/ are the example requests, responses and error bodies published in
the OpenAI chat-completions and Anthropic Messages API references.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import requests
from loopback import endpoint

from exectune_jax import tokens
from exectune_jax.api import providers
from exectune_jax.api.providers import ApiError, Completion
from exectune_jax.config import EndpointConfig

PAYLOADS = Path(__file__).parent / "payloads"
# Fields of the documented examples that the sim does not send (the client never needs them).
OPTIONAL = {"annotations", "service_tier", "prompt_tokens_details", "completion_tokens_details"}


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def shape(x):
    """A JSON value's structure: key sets, list element shapes and scalar kinds."""
    if isinstance(x, dict):
        return {k: shape(v) for k, v in x.items()}
    if isinstance(x, list):
        return [shape(x[0])] if x else []
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, (int, float)):
        return "number"
    return "null" if x is None else type(x).__name__


def assert_conforms(actual: dict, documented: dict, path: str = "") -> None:
    """Every field of `actual` is documented with the same kind, and every documented field that
    is not OPTIONAL is present."""
    for key, value in actual.items():
        assert key in documented, f"{path}{key} is not a documented field"
        if isinstance(documented[key], dict):
            assert isinstance(value, dict), f"{path}{key} should be an object"
            assert_conforms(value, documented[key], f"{path}{key}.")
        elif isinstance(documented[key], list) and documented[key] and isinstance(documented[key][0], dict):
            assert isinstance(value, list) and value, f"{path}{key} should be a non-empty list"
            assert_conforms(value[0], documented[key][0], f"{path}{key}[0].")
        elif documented[key] is not None and value is not None:
            assert shape(value) == shape(documented[key]), f"{path}{key}: {value!r}"
    missing = set(documented) - set(actual) - OPTIONAL
    assert not missing, f"{path or 'body'} lacks documented fields {sorted(missing)}"


MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"}]


def test_openai_request_body_has_the_documented_fields_and_kinds():
    body = providers.openai_body("gpt-4o-mini", MESSAGES, max_tokens=256, temperature=0.7, seed=3)
    assert body == payload("openai_chat_request")


def test_anthropic_request_body_moves_system_messages_to_a_cache_marked_top_level_block():
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello, Claude"}]
    body = providers.anthropic_body("claude-3-5-haiku-20241022", messages, max_tokens=1024,
                                    temperature=0.7)
    assert body == payload("anthropic_messages_request")


def test_documented_openai_response_parses_to_text_finish_reason_and_usage():
    got = providers.parse_openai(payload("openai_chat_response"))
    assert got == Completion("Hello! How can I assist you today?", "stop", 19, 10)


def test_documented_anthropic_response_parses_to_text_stop_reason_and_usage():
    got = providers.parse_anthropic(payload("anthropic_messages_response"))
    assert got == Completion("Hi! My name is Claude.", "end_turn", 2095, 503)


def test_anthropic_prompt_cache_tokens_count_as_input_so_spend_is_never_understated():
    data = payload("anthropic_messages_response")
    data["usage"].update(cache_creation_input_tokens=100, cache_read_input_tokens=5)
    assert providers.parse_anthropic(data).input_tokens == 2095 + 105


def test_documented_error_bodies_yield_their_message():
    assert providers.error_text(payload("openai_error_429")).startswith("Rate limit reached")
    assert providers.error_text(payload("anthropic_error_529")) == "Overloaded"


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("usage"),
    lambda d: d.update(choices=[]),
    lambda d: d["choices"][0].pop("message"),
    lambda d: d["choices"][0]["message"].update(content=["not", "text"]),
    lambda d: d["usage"].update(prompt_tokens=-1),
    lambda d: d["usage"].update(completion_tokens=True),
    lambda d: d["usage"].update(completion_tokens="10"),
])
def test_openai_body_missing_or_mistyped_fields_is_malformed_not_an_empty_answer(mutate):
    data = payload("openai_chat_response")
    mutate(data)
    with pytest.raises(ApiError) as e:
        providers.parse_openai(data)
    assert e.value.kind == "malformed" and e.value.retryable


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("usage"),
    lambda d: d.update(content=None),
    lambda d: d["usage"].pop("output_tokens"),
])
def test_anthropic_body_missing_or_mistyped_fields_is_malformed(mutate):
    data = payload("anthropic_messages_response")
    mutate(data)
    with pytest.raises(ApiError) as e:
        providers.parse_anthropic(data)
    assert e.value.kind == "malformed"


@pytest.mark.parametrize("status,kind,retryable", [
    (400, "client_error", False), (401, "client_error", False), (403, "client_error", False),
    (404, "client_error", False), (422, "client_error", False), (408, "timeout", True),
    (409, "server_error", True), (429, "rate_limit", True), (500, "server_error", True),
    (503, "server_error", True), (529, "server_error", True),
])
def test_only_408_409_429_and_5xx_statuses_are_retryable(status, kind, retryable):
    assert providers.status_kind(status) == kind
    assert ApiError(kind, "x").retryable is retryable


def test_retry_after_prefers_milliseconds_then_seconds_then_http_date():
    assert providers.parse_retry_after({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert providers.parse_retry_after({"retry-after": "3"}) == 3.0
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert providers.parse_retry_after({"retry-after": date}, now=1445412480.0) == pytest.approx(10.0)
    assert providers.parse_retry_after({"retry-after": "soon"}) is None
    assert providers.parse_retry_after({}) is None


def _post(server, path, body, headers=None):
    return requests.post(server.url + path, json=body, headers=headers or {}, timeout=5)


def test_sim_openai_responses_use_documented_fields_and_count_usage(sim_server):
    server = sim_server()
    body = {**payload("openai_chat_request"), "model": "sim-core"}
    resp = _post(server, "/v1/chat/completions", body)
    assert resp.status_code == 200
    data = resp.json()
    assert_conforms(data, payload("openai_chat_response"))
    got = providers.parse_openai(data)
    assert got.input_tokens == tokens.count_messages(body["messages"])
    assert got.output_tokens == tokens.count(got.text) > 0
    assert data["usage"]["total_tokens"] == got.input_tokens + got.output_tokens


def test_sim_anthropic_responses_use_documented_fields_and_count_usage(sim_server):
    server = sim_server()
    body = {**payload("anthropic_messages_request"), "model": "sim-core"}
    resp = _post(server, "/v1/messages", body, {"anthropic-version": providers.ANTHROPIC_VERSION})
    assert resp.status_code == 200
    data = resp.json()
    assert_conforms(data, payload("anthropic_messages_response"))
    got = providers.parse_anthropic(data)
    system_first = [{"role": "system", "content": body["system"][0]["text"]}, *body["messages"]]
    assert got.input_tokens == tokens.count_messages(system_first)
    assert got.stop_reason == "end_turn"


def test_sim_error_bodies_have_each_formats_documented_shape(sim_server):
    server = sim_server(rpm=60, burst=1)
    body = {**payload("openai_chat_request"), "model": "sim-core"}
    assert _post(server, "/v1/chat/completions", body).status_code == 200
    limited = _post(server, "/v1/chat/completions", body)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert shape(limited.json()) == shape(payload("openai_error_429"))

    bad = {k: v for k, v in payload("anthropic_messages_request").items() if k != "max_tokens"}
    resp = _post(sim_server(), "/v1/messages", bad, {"anthropic-version": providers.ANTHROPIC_VERSION})
    assert resp.status_code == 400
    assert resp.json() == payload("anthropic_error_400")

    overloaded = sim_server(fault_rate=0.999999, fault_kinds=("server_error",))
    resp = _post(overloaded, "/v1/messages", payload("anthropic_messages_request") | {"model": "sim-core"},
                 {"anthropic-version": providers.ANTHROPIC_VERSION})
    assert resp.status_code == 529
    assert shape(resp.json()) == shape(payload("anthropic_error_529"))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_complete_round_trips_both_wire_formats_through_the_real_client(sim_server, provider):
    server = sim_server()
    got = providers.complete(endpoint(server, provider), MESSAGES, max_tokens=32, temperature=0.0, seed=0)
    assert got.text.startswith("answer ")
    assert got.stop_reason == ("stop" if provider == "openai" else "end_turn")
    assert got.input_tokens == tokens.count_messages(MESSAGES)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_max_tokens_cuts_the_answer_and_reports_the_length_stop(sim_server, provider):
    server = sim_server()
    got = providers.complete(endpoint(server, provider), MESSAGES, max_tokens=2, temperature=0.0, seed=0)
    assert got.output_tokens == 2
    assert got.stop_reason == ("length" if provider == "openai" else "max_tokens")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_key_goes_in_the_providers_header_and_a_wrong_key_is_a_client_error_without_the_key(
        sim_server, monkeypatch, provider):
    server = sim_server(api_key="right-key-123456")
    ep = endpoint(server, provider, api_key_env="EXECTUNE_TEST_KEY")
    monkeypatch.setenv("EXECTUNE_TEST_KEY", "right-key-123456")
    assert providers.complete(ep, MESSAGES, max_tokens=8, temperature=0.0, seed=0).text
    monkeypatch.setenv("EXECTUNE_TEST_KEY", "wrong-key-987654")
    with pytest.raises(ApiError) as e:
        providers.complete(ep, MESSAGES, max_tokens=8, temperature=0.0, seed=0)
    assert e.value.kind == "client_error" and e.value.status == 401
    assert "wrong-key-987654" not in str(e.value)


def test_scrub_blanks_a_key_that_a_server_echoes_in_its_error_text(monkeypatch):
    monkeypatch.setenv("EXECTUNE_TEST_KEY", "sk-secret-value")
    ep = EndpointConfig(api_key_env="EXECTUNE_TEST_KEY")
    assert providers.scrub("bad key sk-secret-value given", ep) == "bad key [redacted] given"


def test_refused_connection_is_a_retryable_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", timeout_s=2.0)
    with pytest.raises(ApiError) as e:
        providers.complete(ep, MESSAGES, max_tokens=8, temperature=0.0, seed=0)
    assert e.value.kind == "connection" and e.value.retryable


def test_a_server_that_hangs_past_the_timeout_is_a_retryable_timeout(sim_server):
    server = sim_server(fault_rate=0.999999, fault_kinds=("timeout",), hang_s=1.0)
    ep = endpoint(server, timeout_s=0.2)
    with pytest.raises(ApiError) as e:
        providers.complete(ep, MESSAGES, max_tokens=8, temperature=0.0, seed=0)
    assert e.value.kind == "timeout" and e.value.retryable


@pytest.mark.parametrize("kind", ["truncated", "malformed"])
def test_truncated_or_malformed_200_bodies_are_retryable_malformed_errors(sim_server, kind):
    server = sim_server(fault_rate=0.999999, fault_kinds=(kind,))
    for i in range(4):  # both variants of the malformed fault
        with pytest.raises(ApiError) as e:
            providers.complete(endpoint(server), [{"role": "user", "content": "x" * i}],
                               max_tokens=8, temperature=0.0, seed=0)
        assert e.value.kind == "malformed" and e.value.retryable


@pytest.mark.parametrize("provider,base_url,url", [
    # Anthropic: the host, with or without /v1 and a trailing slash, or the route pasted whole
    ("anthropic", "https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://api.anthropic.com/v1/", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://api.anthropic.com/v1/messages", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://gw.example/acct/anthropic", "https://gw.example/acct/anthropic/v1/messages"),
    # OpenAI-compatible: a bare host gets /v1; a given path is the SDK's base_url and is kept
    ("openai", "http://host:8000", "http://host:8000/v1/chat/completions"),
    ("openai", "http://host:8000/", "http://host:8000/v1/chat/completions"),
    ("openai", "http://host:8000/v1", "http://host:8000/v1/chat/completions"),
    ("openai", "http://host:8000/v1/", "http://host:8000/v1/chat/completions"),
    ("openai", "https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1/chat/completions"),
    ("openai", "https://generativelanguage.googleapis.com/v1beta/openai/",
     "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"),
    ("openai", "http://host:8000/v1/chat/completions", "http://host:8000/v1/chat/completions"),
    ("openai", "https://api.perplexity.ai/chat/completions", "https://api.perplexity.ai/chat/completions"),
])
def test_each_base_url_form_yields_exactly_one_correct_url(provider, base_url, url):
    assert providers.endpoint_url(EndpointConfig(provider=provider, base_url=base_url)) == url


@pytest.mark.parametrize("provider,suffix", [
    ("openai", ""), ("openai", "/"), ("openai", "/v1/"), ("openai", "/v1/chat/completions"),
    ("anthropic", "/"), ("anthropic", "/v1"), ("anthropic", "/v1/"), ("anthropic", "/v1/messages"),
])
def test_the_sim_server_answers_the_real_client_at_every_base_url_form(sim_server, provider, suffix):
    server = sim_server()
    ep = EndpointConfig(provider=provider, base_url=server.url + suffix, timeout_s=5.0)
    assert providers.complete(ep, MESSAGES, max_tokens=8, temperature=0.0, seed=0).text.startswith("answer ")
