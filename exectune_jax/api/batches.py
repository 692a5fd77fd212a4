"""Wire formats of the providers' batch APIs: Anthropic Message Batches and the OpenAI Batch API.

Both take many request bodies at once, each tagged with a `custom_id`, process them within a
day at half price, and hand back one result per id in a JSONL stream (Anthropic: the batch's
results_url; OpenAI: an output file and an error file). This module creates batches, reads
their status and parses their results; the pool decides what to batch, polls, and retries.

Every failure is an `ApiError` of the same kinds as an online call, so the pool's retry rules
apply unchanged: per item (an errored result carries its HTTP status or error type) and per
management call (creating, polling, downloading). A result line that does not parse is skipped
and its item counts as unfinished, exactly like an item of an expired or cancelled batch:
the pool resubmits it, never scores it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import requests

from exectune_jax.api import providers
from exectune_jax.api.providers import ApiError, Completion

log = logging.getLogger(__name__)

# Requests per batch that each provider accepts (Anthropic 100,000; OpenAI 50,000 per input file).
MAX_REQUESTS = {"anthropic": 100_000, "openai": 50_000}
_ANTHROPIC_ERROR_KINDS = {"rate_limit_error": "rate_limit", "overloaded_error": "server_error",
                          "api_error": "server_error", "timeout_error": "timeout"}
_OPENAI_ENDED = frozenset({"completed", "expired", "cancelled", "failed"})


@dataclass(frozen=True)
class Status:
    """A batch's state: `ended` once no item is still processing; `failed` when the provider
    refused the whole input (OpenAI validation); `raw` is the provider's batch object."""

    ended: bool
    failed: bool
    raw: Mapping


def _base(endpoint) -> str:
    """The batch routes' root, from the same normalised API root as online calls."""
    root = providers.api_root(endpoint.provider, endpoint.base_url)
    return root + "/messages/batches" if endpoint.provider == "anthropic" else root


def _http(method: str, url: str, endpoint, *, stream_text: bool = False, **kwargs):
    """One management call: the parsed JSON body (or text), or an ApiError."""
    try:
        resp = providers._session().request(method, url, headers=providers._headers(endpoint),
                                            timeout=endpoint.timeout_s, **kwargs)
    except requests.Timeout:
        raise ApiError("timeout", f"no response within {endpoint.timeout_s}s") from None
    except requests.RequestException as e:
        raise ApiError("connection", providers.scrub(f"{type(e).__name__}: {e}", endpoint)) from None
    if resp.status_code != 200:
        try:
            message = providers.error_text(resp.json())
        except ValueError:
            message = resp.text
        raise ApiError(providers.status_kind(resp.status_code),
                       providers.scrub(f"HTTP {resp.status_code}: {message}", endpoint),
                       status=resp.status_code, retry_after=providers.parse_retry_after(resp.headers))
    if stream_text:
        return resp.text
    try:
        return resp.json()
    except ValueError:
        raise ApiError("malformed", providers.scrub(f"body is not JSON: {resp.text[:80]!r}", endpoint)) from None


def _id(data) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise ApiError("malformed", "response has no id")
    return data["id"]


def create(endpoint, bodies: Sequence[tuple[str, dict]]) -> str:
    """Submit (custom_id, request body) pairs as one batch; returns the batch id."""
    if endpoint.provider == "anthropic":
        payload = {"requests": [{"custom_id": cid, "params": body} for cid, body in bodies]}
        return _id(_http("POST", _base(endpoint), endpoint, json=payload))
    lines = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                                "body": body}) + "\n" for cid, body in bodies)
    upload = _http("POST", _base(endpoint) + "/files", endpoint, data={"purpose": "batch"},
                   files={"file": ("batch.jsonl", lines.encode(), "application/jsonl")})
    return _id(_http("POST", _base(endpoint) + "/batches", endpoint, json={
        "input_file_id": _id(upload), "endpoint": "/v1/chat/completions", "completion_window": "24h"}))


def status(endpoint, batch_id: str) -> Status:
    if endpoint.provider == "anthropic":
        data = _http("GET", f"{_base(endpoint)}/{batch_id}", endpoint)
        state = data.get("processing_status") if isinstance(data, dict) else None
        if state not in ("in_progress", "canceling", "ended"):
            raise ApiError("malformed", f"batch {batch_id} has processing_status {state!r}")
        return Status(state == "ended", False, data)
    data = _http("GET", f"{_base(endpoint)}/batches/{batch_id}", endpoint)
    state = data.get("status") if isinstance(data, dict) else None
    if not isinstance(state, str):
        raise ApiError("malformed", f"batch {batch_id} has no status")
    return Status(state in _OPENAI_ENDED, state == "failed", data)


def cancel(endpoint, batch_id: str) -> Status:
    """Ask the provider to stop a batch; unfinished items end as canceled (Anthropic) or are
    left out of the output (OpenAI)."""
    url = (f"{_base(endpoint)}/{batch_id}/cancel" if endpoint.provider == "anthropic"
           else f"{_base(endpoint)}/batches/{batch_id}/cancel")
    data = _http("POST", url, endpoint)
    return Status(False, False, data)


def _jsonl(text: str, where: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            log.warning("%s line %d is not JSON; its item will be resubmitted", where, lineno)
            continue
        if isinstance(row, dict) and isinstance(row.get("custom_id"), str):
            rows.append(row)
        else:
            log.warning("%s line %d has no custom_id; its item will be resubmitted", where, lineno)
    return rows


def _anthropic_item(result) -> Completion | ApiError | None:
    kind = result.get("type") if isinstance(result, dict) else None
    if kind == "succeeded":
        return providers.parse_anthropic(result.get("message"))
    if kind == "errored":
        inner = result.get("error")
        inner = inner.get("error", inner) if isinstance(inner, dict) else {}
        err_type = inner.get("type") if isinstance(inner, dict) else None
        return ApiError(_ANTHROPIC_ERROR_KINDS.get(err_type, "client_error"),
                        str(inner.get("message") or err_type) if isinstance(inner, dict) else "errored")
    return None  # canceled or expired: unfinished


def _openai_item(row: Mapping) -> Completion | ApiError | None:
    response = row.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        code = response["status_code"]
        if code == 200:
            return providers.parse_openai(response.get("body"))
        return ApiError(providers.status_kind(code),
                        f"HTTP {code}: {providers.error_text(response.get('body'))}", status=code)
    return None  # batch_expired or cancelled before it ran: unfinished


def results(endpoint, st: Status) -> dict[str, Completion | ApiError]:
    """Each custom_id's outcome in an ended batch: a Completion, or the ApiError it met. Ids that
    are absent (unfinished, or on a line that did not parse) are for the caller to resubmit."""
    out: dict[str, Completion | ApiError] = {}
    if endpoint.provider == "anthropic":
        url = st.raw.get("results_url") or f"{_base(endpoint)}/{_id(st.raw)}/results"
        for row in _jsonl(_http("GET", url, endpoint, stream_text=True), f"batch {_id(st.raw)} results"):
            try:
                item = _anthropic_item(row.get("result"))
            except ApiError as e:
                item = e
            if item is not None:
                out[row["custom_id"]] = item
        return out
    for key in ("output_file_id", "error_file_id"):
        file_id = st.raw.get(key)
        if not file_id:
            continue
        text = _http("GET", f"{_base(endpoint)}/files/{file_id}/content", endpoint, stream_text=True)
        for row in _jsonl(text, f"batch {_id(st.raw)} {key[:-3]}"):
            try:
                item = _openai_item(row)
            except ApiError as e:
                item = e
            if item is not None:
                out[row["custom_id"]] = item
    return out
