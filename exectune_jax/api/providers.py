"""Wire formats of the black-box model APIs: OpenAI-compatible chat completions and Anthropic Messages.

One call is one HTTP POST through a per-thread `requests.Session` (sessions are not safe to
share between threads, and one per thread keeps a warm keep-alive connection per worker).
Every way a call can fail becomes an `ApiError` with a `kind` the pool decides retries on, so
no caller ever sees a half-parsed body or an empty string standing in for an answer.

The API key is read from the environment variable the endpoint names, at the moment of the
call, and exists only in the request headers: it is never stored on an object, logged, or put
in an error message (server-supplied error text is scrubbed of it before it travels on).
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

PROVIDERS = ("openai", "anthropic")
ROUTES = {"openai": "/chat/completions", "anthropic": "/messages"}  # under api_root()
ANTHROPIC_VERSION = "2023-06-01"
RETRYABLE_KINDS = frozenset({"rate_limit", "server_error", "timeout", "connection", "malformed"})
_ERROR_TEXT_CHARS = 300

_local = threading.local()


@dataclass(frozen=True)
class Completion:
    """A parsed successful response."""

    text: str
    stop_reason: str | None
    input_tokens: int  # every prompt token, cached or not
    output_tokens: int
    cache_read_tokens: int = 0  # of input_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of input_tokens: written to it (Anthropic bills writes extra)


class ApiError(Exception):
    """A failed call. `kind` is one of rate_limit, server_error, timeout, connection, malformed,
    client_error; `retry_after` is the server's requested wait in seconds, when it sent one."""

    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


def status_kind(status: int) -> str:
    """Error kind of a non-200 HTTP status: 408/409/429/5xx are transient, other 4xx are not."""
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status == 409 or status >= 500:
        return "server_error"
    return "client_error"


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def openai_body(model: str, messages: Sequence[Mapping[str, str]], *, max_tokens: int,
                temperature: float, seed: int) -> dict:
    """A chat-completions request body; `seed` carries the sample index."""
    return {
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
    }


def anthropic_body(model: str, messages: Sequence[Mapping[str, str]], *, max_tokens: int,
                   temperature: float) -> dict:
    """A Messages request body: system messages move to the top-level `system` field, as one
    text block marked `cache_control` so the constant instructions are read from Anthropic's
    prompt cache after the first call.

    The Messages API has no seed; the sample index still separates cache entries."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": m["role"], "content": m["content"]}
                     for m in messages if m["role"] != "system"],
        "temperature": temperature,
    }
    if system:
        body["system"] = [{"type": "text", "text": "\n\n".join(system),
                           "cache_control": {"type": "ephemeral"}}]
    return body


def _need(data: Any, *path: str | int) -> Any:
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            raise ApiError("malformed", f"response has no {'.'.join(map(str, path))}") from None
    return data


def _obj(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ApiError("malformed", f"response field {where} is not an object")
    return value


def _tokens(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError("malformed", f"response field {field} is not a token count: {value!r}")
    return value


def parse_openai(data: Any) -> Completion:
    """Text, finish reason and usage of a chat-completions response."""
    choice = _obj(_need(data, "choices", 0), "choices.0")
    content = _obj(_need(choice, "message"), "choices.0.message").get("content")
    if content is not None and not isinstance(content, str):
        raise ApiError("malformed", "choices.0.message.content is not a string")
    usage = _obj(_need(data, "usage"), "usage")
    details = usage.get("prompt_tokens_details") or {}
    prompt = _tokens(_need(usage, "prompt_tokens"), "usage.prompt_tokens")
    cached = _tokens(_obj(details, "usage.prompt_tokens_details").get("cached_tokens") or 0,
                     "usage.prompt_tokens_details.cached_tokens")
    if cached > prompt:
        raise ApiError("malformed", f"usage reports {cached} cached of {prompt} prompt tokens")
    return Completion(
        text=content or "",
        stop_reason=choice.get("finish_reason"),
        input_tokens=prompt,
        output_tokens=_tokens(_need(usage, "completion_tokens"), "usage.completion_tokens"),
        cache_read_tokens=cached,
    )


def parse_anthropic(data: Any) -> Completion:
    """Text, stop reason and usage of a Messages response.

    Anthropic's `input_tokens` excludes the prompt-cache reads and writes; `Completion.input_tokens`
    counts all three, with the reads and writes also kept apart so the ledger prices each."""
    blocks = _need(data, "content")
    if not isinstance(blocks, list):
        raise ApiError("malformed", "response content is not a list")
    text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    usage = _obj(_need(data, "usage"), "usage")
    write, read = (_tokens(usage.get(k) or 0, f"usage.{k}")
                   for k in ("cache_creation_input_tokens", "cache_read_input_tokens"))
    return Completion(
        text=text,
        stop_reason=_obj(data, "body").get("stop_reason"),
        input_tokens=_tokens(_need(usage, "input_tokens"), "usage.input_tokens") + write + read,
        output_tokens=_tokens(_need(usage, "output_tokens"), "usage.output_tokens"),
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


def error_text(data: Any) -> str:
    """The human message of an error body in either format (both nest it under `error`)."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or err)
    return str(err or data)[:_ERROR_TEXT_CHARS]


def api_root(provider: str, base_url: str) -> str:
    """The root a provider's routes hang from, for each form of base_url users write: with or
    without a trailing slash, with or without /v1, or the whole route URL pasted in.

    Anthropic serves under /v1 on its host and behind gateways alike, so /v1 is added where it
    is missing. An OpenAI-compatible base_url means what it means to the OpenAI SDK, so a path
    that is given is kept (servers mount the API under their own prefixes: /openai/v1,
    /v1beta/openai); only a bare host gets /v1, where OpenAI and the self-hosted servers (vLLM,
    llama.cpp, Ollama) serve it. A server that answers at the host itself is reached by writing
    its whole route URL."""
    base = base_url.rstrip("/")
    route = ROUTES[provider]
    if base.endswith(route):
        return base[: -len(route)]
    if provider == "anthropic":
        return base if base.endswith("/v1") else base + "/v1"
    return base if urlsplit(base).path else base + "/v1"


def endpoint_url(endpoint: Any) -> str:
    """The URL one call of `endpoint` posts to."""
    return api_root(endpoint.provider, endpoint.base_url) + ROUTES[endpoint.provider]


def _secret(endpoint: Any) -> str | None:
    return os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None


def missing_key(endpoint: Any) -> bool:
    """True when the endpoint names a key variable that the environment does not set."""
    return bool(endpoint.api_key_env) and not _secret(endpoint)


def _headers(endpoint: Any) -> dict[str, str]:
    key = _secret(endpoint)
    if endpoint.provider == "anthropic":
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if key:
            headers["x-api-key"] = key
        return headers
    return {"authorization": f"Bearer {key}"} if key else {}


def scrub(text: str, endpoint: Any) -> str:
    """`text` shortened, with the endpoint's key value (if any appears) blanked out."""
    key = _secret(endpoint)
    text = text[:_ERROR_TEXT_CHARS]
    return text.replace(key, "[redacted]") if key else text


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        _local.session = session
    return session


def request_body(endpoint: Any, messages: Sequence[Mapping[str, str]], *, max_tokens: int,
                 temperature: float, seed: int) -> dict:
    if endpoint.provider == "openai":
        return openai_body(endpoint.model, messages, max_tokens=max_tokens,
                           temperature=temperature, seed=seed)
    return anthropic_body(endpoint.model, messages, max_tokens=max_tokens, temperature=temperature)


def complete(endpoint: Any, messages: Sequence[Mapping[str, str]], *, max_tokens: int,
             temperature: float, seed: int) -> Completion:
    """One HTTP call; a `Completion` or an `ApiError`, nothing else."""
    body = request_body(endpoint, messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
    try:
        resp = _session().post(endpoint_url(endpoint), json=body, headers=_headers(endpoint),
                               timeout=endpoint.timeout_s)
    except requests.Timeout:
        raise ApiError("timeout", f"no response within {endpoint.timeout_s}s") from None
    except requests.RequestException as e:
        raise ApiError("connection", scrub(f"{type(e).__name__}: {e}", endpoint)) from None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code != 200:
        message = error_text(data) if data is not None else resp.text
        raise ApiError(status_kind(resp.status_code),
                       scrub(f"HTTP {resp.status_code}: {message}", endpoint),
                       status=resp.status_code, retry_after=parse_retry_after(resp.headers))
    if data is None:
        raise ApiError("malformed", scrub(f"body is not JSON: {resp.text[:80]!r}", endpoint))
    return parse_openai(data) if endpoint.provider == "openai" else parse_anthropic(data)
