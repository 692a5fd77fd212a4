"""Anthropic's Message Batches API and OpenAI's Batch API (with its Files API), as the sim server
speaks them.

Anthropic: `POST /v1/messages/batches` ({requests: [{custom_id, params}]}), `GET .../{id}`
(processing_status in_progress -> canceling -> ended, request_counts), `GET .../{id}/results`
(JSONL of {custom_id, result: succeeded | errored | canceled | expired}), `POST .../{id}/cancel`.
OpenAI: `POST /v1/files` (multipart, purpose=batch, a JSONL of {custom_id, method, url, body}),
`POST /v1/batches` ({input_file_id, endpoint, completion_window}), `GET /v1/batches/{id}`
(validating -> in_progress -> completed | expired | cancelled | failed), `POST .../{id}/cancel`,
`GET /v1/files/{id}/content` (the output and error files).

A batch's items finish evenly over `delay_s` after creation; items still unfinished when the
batch expires (`expire_s` after creation) or is cancelled end as expired or canceled. Answers
are computed at creation, by the same code as the online routes. The server's fault injection
applies per item: a server_error, timeout or disconnect fault makes the item errored (HTTP 500
inside the result), a truncated or malformed fault writes its result line cut in half, so a
client meets a malformed results file. Results are listed in custom_id order, not submission
order: a client must map them back by id.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from exectune_jax.sim.wire import (BadRequest, anthropic_error, openai_error, parse_anthropic_request,
                                   parse_openai_request)

ANTHROPIC_BATCHES = "/v1/messages/batches"
OPENAI_BATCHES = "/v1/batches"
OPENAI_FILES = "/v1/files"
CHAT_ENDPOINT = "/v1/chat/completions"
DAY_S = 24 * 3600.0
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class _Item:
    custom_id: str
    done_at: float
    status: int  # HTTP status of the item's answer
    body: dict  # the response or error body, in the batch's format
    garbled: bool = False  # its results line is written cut in half


@dataclass
class _Batch:
    id: str
    fmt: str
    created: float
    expires_at: float
    items: list[_Item]
    input_file_id: str | None = None
    cancelled_at: float | None = None
    errors: list[dict] = field(default_factory=list)  # OpenAI validation errors (status failed)
    files: dict[str, str] = field(default_factory=dict)  # kind (output, error) -> file id

    def ended_at(self) -> float:
        end = max((i.done_at for i in self.items), default=self.created)
        if self.errors:
            end = self.created
        return min(end, self.expires_at, self.cancelled_at if self.cancelled_at is not None else end)

    def state(self, item: _Item, now: float) -> str:
        """succeeded, errored, processing, canceled or expired at time `now`."""
        if item.done_at <= min(now, self.expires_at, self.cancelled_at or now):
            return "succeeded" if item.status == 200 else "errored"
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "canceled"
        return "expired" if now >= self.expires_at else "processing"


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class BatchStore:
    """Batches and files of one sim server. `handle()` answers a request on a batch route."""

    def __init__(self, sim: Any, delay_s: float = 0.0, expire_s: float | None = None):
        self.sim, self.delay_s = sim, delay_s
        self.expire_s = DAY_S if expire_s is None else expire_s
        self.batches: dict[str, _Batch] = {}
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (purpose, content)
        self.created: list[tuple[str, list[str]]] = []  # (batch id, custom ids), in creation order

    @staticmethod
    def owns(path: str) -> bool:
        return path.startswith((ANTHROPIC_BATCHES, OPENAI_BATCHES, OPENAI_FILES))

    def handle(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, bytes, str]:
        fmt = "anthropic" if path.startswith(ANTHROPIC_BATCHES) else "openai"
        parts = path.rstrip("/").split("/")[1:]  # ["v1", "messages", "batches", id, action]
        try:
            if fmt == "anthropic":
                rest = parts[3:]
                if not headers.get("anthropic-version"):
                    raise BadRequest("anthropic-version: header is required")
                if method == "POST" and not rest:
                    return self._json(self._anthropic_create(raw))
                batch = self._get(rest[0] if rest else "", fmt)
                action = rest[1] if len(rest) > 1 else None
                if method == "GET" and action is None:
                    return self._json(self._anthropic_object(batch))
                if method == "GET" and action == "results":
                    return self._anthropic_results(batch)
                if method == "POST" and action == "cancel":
                    return self._json(self._cancel(batch, "canceling"))
            elif parts[1] == "files":
                rest = parts[2:]
                if method == "POST" and not rest:
                    return self._json(self._upload(headers.get("content-type", ""), raw))
                if method == "GET" and len(rest) == 2 and rest[1] == "content" and rest[0] in self.files:
                    return 200, self.files[rest[0]][1], "application/jsonl"
                return self._error(fmt, 404, f"No such File object: {rest[0] if rest else ''}")
            else:
                rest = parts[2:]
                if method == "POST" and not rest:
                    return self._json(self._openai_create(raw))
                batch = self._get(rest[0] if rest else "", fmt)
                action = rest[1] if len(rest) > 1 else None
                if method == "GET" and action is None:
                    return self._json(self._openai_object(batch))
                if method == "POST" and action == "cancel":
                    return self._json(self._cancel(batch, "cancelling"))
        except BadRequest as e:
            return self._error(fmt, 400, str(e))
        except KeyError as e:
            return self._error(fmt, 404, str(e.args[0]))
        return self._error(fmt, 404, f"no route {method} {path}")

    # ---- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _json(data: dict) -> tuple[int, bytes, str]:
        return 200, json.dumps(data).encode(), "application/json"

    @staticmethod
    def _error(fmt: str, status: int, message: str) -> tuple[int, bytes, str]:
        body = openai_error(status, message) if fmt == "openai" else anthropic_error(status, message)
        return status, json.dumps(body).encode(), "application/json"

    def _get(self, batch_id: str, fmt: str) -> _Batch:
        with self.sim._lock:
            batch = self.batches.get(batch_id)
        if batch is None or batch.fmt != fmt:
            raise KeyError(f"no batch {batch_id!r}")
        return batch

    def _item(self, fmt: str, custom_id: str, body: Any, done_at: float) -> _Item:
        """Answer one request of a batch as the online route would, faults included."""
        try:
            req = parse_openai_request(body) if fmt == "openai" else parse_anthropic_request(body)
        except BadRequest as e:
            return _Item(custom_id, done_at, 400, self._body(fmt, 400, str(e)))
        model = self.sim.model(req["model"])
        if model is None:
            return _Item(custom_id, done_at, 404, self._body(fmt, 404, f"model {req['model']!r} does not exist"))
        fault = self.sim.next_fault(json.dumps(body, sort_keys=True).encode())
        if fault is not None:
            self.sim._count("faults", fault)
        if fault in ("server_error", "timeout", "disconnect"):
            return _Item(custom_id, done_at, 500, self._body(fmt, 500, "Internal server error"))
        try:
            payload = self.sim.answer(fmt, model, req, delivered=fault is None)
        except Exception as e:  # a model bug is the item's 500, as online
            return _Item(custom_id, done_at, 500, self._body(fmt, 500, f"simulated model failed: {e}"))
        self.sim._count("ok")
        return _Item(custom_id, done_at, 200, payload, garbled=fault in ("truncated", "malformed"))

    @staticmethod
    def _body(fmt: str, status: int, message: str) -> dict:
        return openai_error(status, message) if fmt == "openai" else anthropic_error(status, message)

    def _new(self, fmt: str, prefix: str, requests: list[tuple[str, Any]], input_file_id: str | None = None,
             errors: list[dict] | None = None) -> _Batch:
        now = time.time()
        n = len(requests)
        items = [self._item(fmt, cid, body, now + self.delay_s * (i + 1) / n)
                 for i, (cid, body) in enumerate(requests)] if not errors else []
        batch = _Batch(f"{prefix}{uuid.uuid4().hex[:24]}", fmt, now, now + self.expire_s, items,
                       input_file_id, errors=errors or [])
        with self.sim._lock:
            self.batches[batch.id] = batch
            self.created.append((batch.id, [cid for cid, _ in requests]))
            self.sim._stats["batches"] += 1
        if self.sim.batch_log is not None:
            self.sim.batch_log(f"batch {batch.id} created: {n} requests ({fmt})")
        return batch

    def _cancel(self, batch: _Batch, status: str) -> dict:
        now = time.time()
        with self.sim._lock:
            if batch.cancelled_at is None and now < batch.ended_at():
                batch.cancelled_at = now
        data = self._anthropic_object(batch) if batch.fmt == "anthropic" else self._openai_object(batch)
        key = "processing_status" if batch.fmt == "anthropic" else "status"
        data[key] = status  # the cancel call itself answers with the transitional status
        return data

    # ---- Anthropic ------------------------------------------------------------------------------

    def _anthropic_create(self, raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadRequest("request body is not valid JSON") from None
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            raise BadRequest("requests: at least one request is required")
        seen = set()
        for i, r in enumerate(reqs):
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
                raise BadRequest(f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if cid in seen:
                raise BadRequest(f"requests.{i}.custom_id: duplicate custom_id {cid!r}")
            if not isinstance(r.get("params"), dict):
                raise BadRequest(f"requests.{i}.params: Field required")
            seen.add(cid)
        batch = self._new("anthropic", "msgbatch_", [(r["custom_id"], r["params"]) for r in reqs])
        # the creation call answers before any processing, as the real API does
        return {**self._anthropic_object(batch), "processing_status": "in_progress", "ended_at": None,
                "results_url": None, "request_counts": {"processing": len(reqs), "succeeded": 0, "errored": 0,
                                                        "canceled": 0, "expired": 0}}

    def _anthropic_object(self, batch: _Batch) -> dict:
        now = time.time()
        counts = {k: 0 for k in ("processing", "succeeded", "errored", "canceled", "expired")}
        for item in batch.items:
            counts[batch.state(item, now)] += 1
        ended = now >= batch.ended_at()
        status = "ended" if ended else ("canceling" if batch.cancelled_at is not None else "in_progress")
        return {
            "id": batch.id, "type": "message_batch", "processing_status": status,
            "request_counts": counts, "ended_at": _stamp(batch.ended_at()) if ended else None,
            "created_at": _stamp(batch.created), "expires_at": _stamp(batch.created + DAY_S),
            "archived_at": None,
            "cancel_initiated_at": _stamp(batch.cancelled_at) if batch.cancelled_at is not None else None,
            "results_url": (f"{self.sim.url}{ANTHROPIC_BATCHES}/{batch.id}/results" if ended else None),
        }

    def _anthropic_results(self, batch: _Batch) -> tuple[int, bytes, str]:
        now = time.time()
        if now < batch.ended_at():
            return self._error("anthropic", 400, f"Message Batch {batch.id} has not yet ended")
        lines = []
        for item in sorted(batch.items, key=lambda i: i.custom_id):
            state = batch.state(item, now)
            if state == "succeeded":
                result = {"type": "succeeded", "message": item.body}
            elif state == "errored":
                result = {"type": "errored", "error": item.body}
            else:
                result = {"type": state}
            line = json.dumps({"custom_id": item.custom_id, "result": result})
            lines.append(line[: len(line) // 2] if item.garbled and state == "succeeded" else line)
        return 200, ("\n".join(lines) + "\n").encode(), "application/binary"

    # ---- OpenAI --------------------------------------------------------------------------------

    def _upload(self, content_type: str, raw: bytes) -> dict:
        msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        if not msg.is_multipart():
            raise BadRequest("file upload must be multipart/form-data")
        fields, filename = {}, "upload"
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = part.get_payload(decode=True) or b""
            if name == "file":
                filename = part.get_filename() or filename
        if fields.get("purpose", b"").decode() != "batch":
            raise BadRequest("purpose: this server accepts only purpose=batch uploads")
        if "file" not in fields:
            raise BadRequest("file: Field required")
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        with self.sim._lock:
            self.files[file_id] = ("batch", fields["file"])
        return {"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
                "filename": filename, "purpose": "batch", "status": "processed", "status_details": None}

    def _openai_create(self, raw: bytes) -> dict:
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        if body.get("endpoint") != CHAT_ENDPOINT:
            raise BadRequest(f"endpoint: this server batches only {CHAT_ENDPOINT}")
        if body.get("completion_window") != "24h":
            raise BadRequest("completion_window: must be '24h'")
        file_id = body.get("input_file_id")
        if file_id not in self.files:
            raise BadRequest(f"input_file_id: no such file {file_id!r}")
        requests, errors, seen = [], [], set()
        for lineno, line in enumerate(self.files[file_id][1].decode(errors="replace").splitlines(), 1):
            try:
                r = json.loads(line)
                ok = (isinstance(r, dict) and isinstance(r.get("custom_id"), str) and r.get("method") == "POST"
                      and r.get("url") == CHAT_ENDPOINT and isinstance(r.get("body"), dict))
            except ValueError:
                ok = False
            if not ok or r["custom_id"] in seen:
                errors.append({"code": "invalid_request", "line": lineno, "param": None,
                               "message": "each line needs a unique custom_id, method POST, "
                                          f"url {CHAT_ENDPOINT} and a body object"})
                continue
            seen.add(r["custom_id"])
            requests.append((r["custom_id"], r["body"]))
        if not requests and not errors:
            errors.append({"code": "empty_file", "line": None, "param": None, "message": "the input file is empty"})
        data = self._openai_object(self._new("openai", "batch_", requests, file_id, errors))
        if data["status"] != "failed":  # the creation call answers before validation ends
            data.update(status="validating", in_progress_at=None, completed_at=None, output_file_id=None,
                        error_file_id=None, request_counts={"total": len(requests), "completed": 0, "failed": 0})
        return data

    def _openai_files(self, batch: _Batch, now: float) -> None:
        """Write the output and error files once the batch has ended."""
        out, err = [], []
        for item in sorted(batch.items, key=lambda i: i.custom_id):
            state = batch.state(item, now)
            rid = f"batch_req_{uuid.uuid5(uuid.NAMESPACE_URL, batch.id + item.custom_id).hex[:24]}"
            if state in ("succeeded", "errored"):
                line = json.dumps({"id": rid, "custom_id": item.custom_id, "error": None,
                                   "response": {"status_code": item.status, "request_id": rid[10:],
                                                "body": item.body}})
                if state == "succeeded":
                    out.append(line[: len(line) // 2] if item.garbled else line)
                else:
                    err.append(line)
            elif state == "expired":
                err.append(json.dumps({"id": rid, "custom_id": item.custom_id, "response": None, "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired."}}))
        for kind, lines in (("output", out), ("error", err)):
            if lines:
                file_id = f"file-{uuid.uuid4().hex[:24]}"
                self.files[file_id] = (f"batch_{kind}", ("\n".join(lines) + "\n").encode())
                batch.files[kind] = file_id

    def _openai_object(self, batch: _Batch) -> dict:
        now = time.time()
        ended = now >= batch.ended_at()
        states = [batch.state(i, now) for i in batch.items]
        if batch.errors:
            status = "failed"
        elif ended:
            status = ("cancelled" if batch.cancelled_at is not None else
                      "expired" if now >= batch.expires_at and "expired" in states else "completed")
        elif batch.cancelled_at is not None:
            status = "cancelling"
        else:
            status = "in_progress" if now > batch.created else "validating"
        with self.sim._lock:
            if ended and not batch.errors and not batch.files and batch.items:
                self._openai_files(batch, now)
        at = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at",
              "failed": "failed_at"}.get(status)
        stamps = {k: None for k in ("in_progress_at", "finalizing_at", "completed_at", "failed_at",
                                    "expired_at", "cancelling_at", "cancelled_at")}
        if status != "validating":
            stamps["in_progress_at"] = int(batch.created)
        if at:
            stamps[at] = int(batch.ended_at())
        if batch.cancelled_at is not None:
            stamps["cancelling_at"] = int(batch.cancelled_at)
        return {
            "id": batch.id, "object": "batch", "endpoint": CHAT_ENDPOINT,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id, "completion_window": "24h", "status": status,
            "output_file_id": batch.files.get("output"), "error_file_id": batch.files.get("error"),
            "created_at": int(batch.created), "expires_at": int(batch.created + DAY_S), **stamps,
            "request_counts": {"total": len(batch.items),
                               "completed": sum(s == "succeeded" for s in states),
                               "failed": sum(s == "errored" for s in states)},
            "metadata": None,
        }
