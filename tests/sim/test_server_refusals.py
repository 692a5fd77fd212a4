"""The sim server refuses every malformed request with a 4xx in the route's JSON error format,
prints no traceback for a client's mistake, and goes on serving.

Requests are written by hand (http.client, raw sockets) because a well-behaved client library
would not send most of them."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlsplit

import pytest

from exectune_jax.sim.server import MAX_BODY_BYTES, SimServer
from exectune_jax.sim.wire import MAX_JSON_DEPTH, MAX_OUTPUT_TOKENS

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
ANTHROPIC_BATCHES = "/v1/messages/batches"
GOOD = {
    OPENAI: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    ANTHROPIC: {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
}


class Echo:
    def complete(self, messages, *, max_tokens, temperature, seed):
        return messages[-1]["content"][:20]


@pytest.fixture
def server():
    with SimServer(models={"m": Echo()}) as s:
        yield s


def address(server) -> tuple[str, int]:
    url = urlsplit(server.url)
    return url.hostname, url.port


def connect(server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(*address(server), timeout=10)


def headers_for(path: str, **extra: str) -> dict:
    return {"content-type": "application/json", **({"anthropic-version": "2023-06-01"} if path.startswith(ANTHROPIC)
                                                   else {}), **extra}


def raw_exchange(server, data: bytes) -> tuple[int, dict, bytes]:
    """Send `data` as is on a new connection; (status, headers, body) of the answer."""
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def head_only(path: str, content_length: str, **extra: str) -> bytes:
    """A POST's request line and headers, with no body after them."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {content_length}",
             *(f"{k}: {v}" for k, v in headers_for(path, **extra).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_error(path: str, body: bytes, kind: str = "invalid_request_error") -> str:
    """The body is the route's documented error shape; returns its message."""
    data = json.loads(body)
    if path.startswith(ANTHROPIC):
        assert set(data) == {"type", "error"} and data["type"] == "error"
        assert set(data["error"]) == {"type", "message"} and data["error"]["type"] == kind
    else:
        assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
        assert data["error"]["type"] == "invalid_request_error"
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    return data["error"]["message"]


def assert_still_serves(server, path: str = OPENAI) -> None:
    conn = connect(server)
    conn.request("POST", path, body=json.dumps(GOOD[path]), headers=headers_for(path))
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    conn.close()


def assert_no_traceback(capfd) -> None:
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_a_content_length_over_the_limit_is_a_413_without_reading_the_body(server, capfd, path):
    status, headers, body = raw_exchange(server, head_only(path, "99999999999"))
    assert status == 413 and headers["connection"] == "close"
    assert "99999999999" in assert_error(path, body, kind="request_too_large")
    assert_still_serves(server, path)
    assert_no_traceback(capfd)


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_a_5_mb_body_that_is_sent_whole_gets_the_413_and_not_a_reset(server, capfd, path):
    conn = connect(server)
    body = json.dumps({**GOOD[path], "metadata": {"pad": "x" * (5 << 20)}})
    conn.request("POST", path, body=body, headers=headers_for(path))
    resp = conn.getresponse()
    assert resp.status == 413
    assert str(MAX_BODY_BYTES) in assert_error(path, resp.read(), kind="request_too_large")
    assert_still_serves(server, path)
    assert_no_traceback(capfd)


@pytest.mark.parametrize("length", ["-5", "abc", "1_0", "+7", ""])
@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_a_negative_or_malformed_content_length_is_a_400(server, capfd, path, length):
    status, _, body = raw_exchange(server, head_only(path, length))
    assert status == 400 and "Content-Length" in assert_error(path, body)
    assert_still_serves(server, path)
    assert_no_traceback(capfd)


def test_two_different_content_lengths_are_a_400(server, capfd):
    status, _, body = raw_exchange(server, head_only(OPENAI, "2", **{"Content-Length": "3"}) + b"{}")
    assert status == 400 and "Content-Length" in assert_error(OPENAI, body)
    assert_still_serves(server)
    assert_no_traceback(capfd)


def test_a_chunked_body_is_refused_with_411(server, capfd):
    data = (f"POST {OPENAI} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n").encode()
    status, _, body = raw_exchange(server, data)
    assert status == 411 and "Content-Length" in assert_error(OPENAI, body)
    assert_still_serves(server)
    assert_no_traceback(capfd)


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC, ANTHROPIC_BATCHES])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_json_nested_100k_deep_is_a_400_not_a_recursion_error(server, capfd, path, opener):
    conn = connect(server)
    conn.request("POST", path, body=opener * 100_000, headers=headers_for(path))
    resp = conn.getresponse()
    assert resp.status == 400 and str(MAX_JSON_DEPTH) in assert_error(path, resp.read())
    assert_still_serves(server, OPENAI if path == OPENAI else ANTHROPIC)
    assert_no_traceback(capfd)


def test_brackets_inside_strings_do_not_count_as_nesting(server):
    conn = connect(server)
    text = "[" * 1000 + '\\"{' * 1000
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    conn.request("POST", OPENAI, body=json.dumps(body), headers=headers_for(OPENAI))
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read())["choices"][0]["message"]["content"] == text[:20]


@pytest.mark.parametrize("path,field", [(OPENAI, "max_tokens"), (OPENAI, "max_completion_tokens"),
                                        (ANTHROPIC, "max_tokens")])
def test_max_tokens_above_the_models_limit_is_a_400_naming_the_limit(server, capfd, path, field):
    conn = connect(server)
    body = {**{k: v for k, v in GOOD[path].items() if k != "max_tokens"}, field: 10**12}
    conn.request("POST", path, body=json.dumps(body), headers=headers_for(path))
    resp = conn.getresponse()
    assert resp.status == 400
    message = assert_error(path, resp.read())
    assert str(MAX_OUTPUT_TOKENS) in message and str(10**12) in message and field in message
    conn.request("POST", path, body=json.dumps({**body, field: MAX_OUTPUT_TOKENS}), headers=headers_for(path))
    resp = conn.getresponse()
    assert resp.status == 200  # the limit itself is allowed
    resp.read()
    assert server.stats["ok"] == 1
    assert_no_traceback(capfd)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "FROB"])
@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_other_methods_are_a_405_and_the_connection_goes_on(server, capfd, method, path):
    conn = connect(server)
    conn.request(method, path, body=b'{"a": 1}', headers=headers_for(path))
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("allow") == "GET, POST"
    assert method in assert_error(path, resp.read())
    conn.request("POST", path, body=json.dumps(GOOD[path]), headers=headers_for(path))  # same connection
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read()
    assert_no_traceback(capfd)


def test_head_is_a_405_with_no_body_and_the_connection_goes_on(server, capfd):
    conn = connect(server)
    conn.request("HEAD", OPENAI)
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("content-type") == "application/json"
    assert resp.read() == b""
    conn.request("POST", OPENAI, body=json.dumps(GOOD[OPENAI]), headers=headers_for(OPENAI))
    assert conn.getresponse().status == 200
    assert_no_traceback(capfd)


@pytest.mark.parametrize("data,status", [
    (b"GARBAGE\r\n\r\n", 400),  # no method, path and version
    (b"POST /v1/chat/completions HTTP/7.0\r\n\r\n", 505),
    (b"POST /v1/chat/completions HTTP/1.1\r\n" + b"X-Pad: y\r\n" * 200 + b"\r\n", 431),
])
def test_requests_http_server_cannot_parse_get_a_json_error_too(server, capfd, data, status):
    got, headers, body = raw_exchange(server, data)
    assert got == status and headers["content-type"] == "application/json"
    json.loads(body)["error"]["message"]
    assert_still_serves(server)
    assert_no_traceback(capfd)
