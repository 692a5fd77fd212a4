"""The OpenAI chat-completions and Anthropic Messages wire formats, as the sim server speaks them.

Request validation follows the real APIs' documented rules (unknown fields, missing fields,
out-of-range values and streaming are refused with 400 and the format's error body), so a client
bug that the real service would refuse fails in tests too.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any

from exectune_jax import tokens

OPENAI_KEYS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n",
    "stop", "stream", "stream_options", "user", "metadata", "store", "frequency_penalty",
    "presence_penalty", "logprobs", "top_logprobs", "logit_bias", "response_format", "service_tier",
    "tools", "tool_choice", "parallel_tool_calls",
})
ANTHROPIC_KEYS = frozenset({
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences",
    "stream", "metadata", "tools", "tool_choice", "thinking", "service_tier",
})


# Every simulated model takes at most this many output tokens per reply: Claude 3.5 Haiku's limit,
# the model sim-core stands in for; a client asking for more is refused as the real APIs refuse it.
MAX_OUTPUT_TOKENS = 8192
# A chat request nests about five levels deep (body, messages, message, content blocks, their
# fields); 64 is far above any real body and far below the ~1000 frames at which Python's
# recursive JSON decoder gives up with a RecursionError.
MAX_JSON_DEPTH = 64
# A JSON string (an unterminated one runs to the end: matched without backtracking) or a bracket.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


class BadRequest(Exception):
    """A request the real API would refuse with 400."""


def check_nesting(raw: bytes) -> None:
    """Refuse a body whose brackets (outside strings) nest deeper than MAX_JSON_DEPTH. A linear
    scan, so a hostile body is refused before any recursive decoder sees it; it also covers the
    JSON lines inside a batch upload."""
    depth = 0
    for token in _JSON_TOKEN.finditer(raw):
        char = raw[token.start()]
        if char in b"[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"request body nests JSON more than {MAX_JSON_DEPTH} levels deep")
        elif char in b"]}":
            depth = max(depth - 1, 0)


def parse_json(raw: bytes) -> Any:
    """The JSON value of a request body, or BadRequest."""
    check_nesting(raw)
    try:
        return json.loads(raw)
    except ValueError:
        raise BadRequest("request body is not valid JSON") from None


def _text(content: Any, where: str) -> str:
    """Message content as a string: a string, or a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"{where}: content must be a string or a list of text blocks")


def _marked(content: Any) -> int | None:
    """Index of the last content block marked `cache_control`, or None."""
    if not isinstance(content, list):
        return None
    marks = [i for i, p in enumerate(content) if isinstance(p, dict) and p.get("cache_control")]
    return marks[-1] if marks else None


def _prefix(messages: list[dict], upto: int, text: str) -> tuple[str, int]:
    """(digest, tokens) of a cacheable prompt prefix: whole `messages[:upto]`, then `text` as
    the start of message `upto`."""
    head = messages[:upto]
    digest = hashlib.sha256(json.dumps([[m["role"], m["content"]] for m in head] + [text]).encode())
    return digest.hexdigest(), tokens.count_messages(head) + tokens.count(text) + tokens.MESSAGE_OVERHEAD


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"{key}: must be a number between {lo} and {hi}")
    return float(value)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{key}: must be an integer >= 1")
    return value


def _openai_max_tokens(body: dict) -> int:
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    n = _positive_int(body.get(key, 4096), key)
    if n > MAX_OUTPUT_TOKENS:  # OpenAI's own wording
        raise BadRequest(f"{key} is too large: {n}. This model supports at most {MAX_OUTPUT_TOKENS} "
                         f"completion tokens, whereas you provided {n}.")
    return n


def _anthropic_max_tokens(body: dict) -> int:
    n = _positive_int(body["max_tokens"], "max_tokens")
    if n > MAX_OUTPUT_TOKENS:  # Anthropic's own wording
        raise BadRequest(f"max_tokens: {n} > {MAX_OUTPUT_TOKENS}, which is the maximum allowed number of "
                         f"output tokens for {body['model']}")
    return n


def parse_openai_request(body: Any) -> dict:
    """Validate a chat-completions body -> {model, messages, max_tokens, temperature, seed}."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - OPENAI_KEYS)
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {', '.join(unknown)}")
    if not isinstance(body.get("model"), str):
        raise BadRequest("model: required string")
    if body.get("stream"):
        raise BadRequest("stream: streaming is not supported by the simulated server")
    if body.get("n", 1) != 1:
        raise BadRequest("n: only n=1 is supported by the simulated server")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages: required non-empty array")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise BadRequest(f"messages[{i}].role: must be system, developer, user or assistant")
        role = "system" if m["role"] == "developer" else m["role"]
        messages.append({"role": role, "content": _text(m.get("content"), f"messages[{i}]")})
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BadRequest("seed: must be an integer")
    # OpenAI caches prefixes automatically; the sim's cacheable prefix is the leading system turn.
    prefix = _prefix(messages, 0, messages[0]["content"]) if messages[0]["role"] == "system" else None
    return {"model": body["model"], "messages": messages,
            "max_tokens": _openai_max_tokens(body),
            "temperature": _number(body, "temperature", 0.0, 2.0, 1.0), "seed": seed,
            "cache_prefix": prefix}


def parse_anthropic_request(body: Any) -> dict:
    """Validate a Messages body -> {model, messages (system first), max_tokens, temperature, seed}."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(body) - ANTHROPIC_KEYS)
    if unknown:
        raise BadRequest(f"{unknown[0]}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str):
        raise BadRequest("model: Field required")
    if "max_tokens" not in body:
        raise BadRequest("max_tokens: Field required")
    if body.get("stream"):
        raise BadRequest("stream: streaming is not supported by the simulated server")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages: at least one message is required")
    messages, raw = [], []
    if "system" in body:
        messages.append({"role": "system", "content": _text(body["system"], "system")})
        raw.append(body["system"])
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest(f'messages.{i}.role: Input should be "user" or "assistant"')
        messages.append({"role": m["role"], "content": _text(m.get("content"), f"messages.{i}")})
        raw.append(m.get("content"))
    # The cached prefix ends at the last block marked cache_control (Anthropic caches nothing unmarked).
    prefix = None
    for i, content in enumerate(raw):
        mark = _marked(content)
        if mark is not None:
            prefix = _prefix(messages, i, "".join(p["text"] for p in content[: mark + 1]))
    return {"model": body["model"], "messages": messages,
            "max_tokens": _anthropic_max_tokens(body),
            "temperature": _number(body, "temperature", 0.0, 1.0, 1.0), "seed": 0,
            "cache_prefix": prefix}


def openai_error(status: int, message: str) -> dict:
    kind, code = {
        401: ("invalid_request_error", "invalid_api_key"), 404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }.get(status, ("invalid_request_error" if status < 500 else "server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def anthropic_error(status: int, message: str) -> dict:
    kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
            429: "rate_limit_error", 529: "overloaded_error"}.get(
        status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_response(model: str, text: str, stop: str, input_tokens: int, output_tokens: int,
                    seed: int, cache_read: int = 0) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "length" if stop == "max_tokens" else "stop"}],
        "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                  "total_tokens": input_tokens + output_tokens,
                  "prompt_tokens_details": {"cached_tokens": cache_read, "audio_tokens": 0}},
        "system_fingerprint": f"fp_sim_{seed}",
    }


def anthropic_response(model: str, text: str, stop: str, input_tokens: int, output_tokens: int,
                       cache_read: int = 0, cache_write: int = 0) -> dict:
    """`input_tokens` counts the whole prompt; the body reports, as Anthropic does, the uncached
    part in `input_tokens` and the cache reads and writes beside it."""
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if stop == "max_tokens" else "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": input_tokens - cache_read - cache_write, "output_tokens": output_tokens,
                  "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read},
    }


def malformed_body(fmt: str, variant: int) -> tuple[bytes, dict, str]:
    """A 200 whose body is not what the format promises: an HTML error page, or JSON missing
    the fields a client needs (as proxies and overloaded gateways sometimes return)."""
    if variant % 2:
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>", {}, "text/html"
    body = {"object": "chat.completion", "choices": []} if fmt == "openai" else {"type": "message", "content": None}
    return json.dumps(body).encode(), {}, "application/json"
