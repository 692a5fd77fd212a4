"""A loopback HTTP server that serves the simulated models in the OpenAI and Anthropic wire formats.

`POST /v1/chat/completions` (OpenAI) and `POST /v1/messages` (Anthropic) answer with the
same bodies, usage fields and error bodies as the real APIs, so the client code under test is
the production client; usage includes the prompt-cache fields (a request's constant prefix is
cached after its first delivered answer). Both providers' batch APIs are served too (sim/batches.py). It can add latency, enforce a requests-per-minute limit (429 with
`Retry-After` and `retry-after-ms`) and inject faults: 5xx errors, hangs that outlast the
client's timeout, dropped connections, truncated and malformed bodies.

A request the server cannot or will not take (a body over the route's size limit, a bad
Content-Length, JSON nested too deep, max_tokens above the model's limit, a method other than GET
and POST, a request line http.server cannot parse) is answered with a 4xx in the route's JSON
error format, never with a traceback: it is the client's mistake, not the server's.

When a `truth_log` is given, the server records there whether sim-core really followed each
strategy it was sent (sim/truth.py); that ground truth never goes into a response.

Faults are deterministic: the k-th arrival of a given request body is faulted or not by a hash
of (seed, body, k), independent of thread timing, so a client's retries meet the same fault
sequence on every run. Answers never depend on faults: a body that finally gets through gets
the answer the model gives for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from exectune_jax import tokens
from exectune_jax.api.limits import TokenBucket
from exectune_jax.sim import models
from exectune_jax.sim.batches import BatchStore
from exectune_jax.sim.truth import TruthLog
from exectune_jax.sim.wire import (BadRequest, anthropic_error, anthropic_response, check_nesting, malformed_body,
                                   openai_error, openai_response, parse_anthropic_request, parse_json,
                                   parse_openai_request)
from exectune_jax.world import WORLD, WorldSpec, summary_of, world_from

FAULT_KINDS = ("server_error", "timeout", "disconnect", "truncated", "malformed")
OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
# An online request here is a few KB (instructions, a problem, a strategy); 1 MiB is far above any
# real one and bounds the memory one connection can make the server take.
MAX_BODY_BYTES = 1 << 20
# A batch carries many requests: Anthropic takes batches up to 256 MB (OpenAI's batch input files
# stop at 200 MB), so no batch a real provider would take is refused here.
MAX_BATCH_BODY_BYTES = 256 << 20
# A refused body up to this size is read and dropped, so that a client which sends its whole body
# before it reads gets the 413 rather than a reset connection; a larger one is not worth the wait.
DRAIN_BYTES = 16 << 20
DRAIN_TIMEOUT_S = 5.0


def route_format(path: str) -> str:
    """The wire format a path's answers and errors use: Anthropic's under /v1/messages, else OpenAI's."""
    return "anthropic" if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/") else "openai"


def sim_base_url(root: str, provider: str) -> str:
    """The base URL a client is configured with: OpenAI-style URLs include /v1, Anthropic's do not."""
    return root + "/v1" if provider == "openai" else root


def fault_for(seed: int, digest: str, arrival: int, rate: float, kinds: tuple[str, ...]) -> str | None:
    """The fault injected into the `arrival`-th copy of a body, or None: a pure hash, no state."""
    h = hashlib.sha256(f"{seed}:{digest}:{arrival}".encode()).digest()
    if int.from_bytes(h[:8], "big") / 2**64 >= rate:
        return None
    return kinds[int.from_bytes(h[8:12], "big") % len(kinds)]


def model_seed(sim_seed: int, request_seed: int, temperature: float) -> int:
    """The seed a simulated model answers a request with. Greedy requests, and every request
    under sim seed 0, use the request's own seed (its sample index), so the world at temperature
    0 is one fixed function of the prompt; a sampled request under another sim seed draws other
    text, as a real provider's sampling does from one run to the next."""
    if sim_seed == 0 or float(temperature) == 0.0:
        return request_seed
    return request_seed + (sim_seed << 32)


class SimServer:
    """The simulated APIs on a free loopback port. `start()` returns the root URL; use
    `sim_base_url(root, provider)` for a client's base_url. `stats` counts what it served.

    `models` maps a model name to an object with `.complete(messages, *, max_tokens,
    temperature, seed) -> str` (a mapping or a lookup function; default: the sim registry's
    models in `world`, the default world unless given).
    `api_key`, when set, is required as a Bearer token or x-api-key (else 401).
    `burst` is the rate limiter's bucket size (default: one second's worth of requests).
    `hang_s` is how long a `timeout` fault stalls before dropping the connection.
    `truth_log`: a JSONL path where the ground truth of "followed" is recorded (None: not kept).
    `batch_delay_s` and `batch_expire_s` shape the batch APIs (sim/batches.py); `batch_log`, when
    set, is called with one line per batch created."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency_ms: float = 0.0,
                 rpm: float | None = None, fault_rate: float = 0.0, seed: int = 0, *,
                 models: Mapping[str, Any] | Callable[[str], Any] | None = None,
                 api_key: str | None = None, burst: float | None = None, hang_s: float = 2.0,
                 fault_kinds: tuple[str, ...] = FAULT_KINDS,
                 batch_delay_s: float = 0.0, batch_expire_s: float | None = None,
                 truth_log: str | Path | None = None, world: WorldSpec = WORLD):
        if not 0.0 <= fault_rate < 1.0:
            raise ValueError("fault_rate must be in [0, 1)")
        unknown = set(fault_kinds) - set(FAULT_KINDS)
        if unknown or not fault_kinds:
            raise ValueError(f"fault_kinds must be a non-empty subset of {FAULT_KINDS}")
        self.host, self.port = host, port
        self.latency_s = latency_ms / 1000.0
        self.limiter = TokenBucket(rpm / 60.0, burst or max(1.0, rpm / 60.0)) if rpm else None
        self.fault_rate, self.seed, self.hang_s, self.fault_kinds = fault_rate, seed, hang_s, fault_kinds
        self.world = world
        self._lookup = models.get if isinstance(models, Mapping) else (models or self._registry)
        self._api_key = api_key
        self.truth = TruthLog(truth_log) if truth_log is not None else None
        self._lock = threading.Lock()
        self._arrivals: dict[str, int] = {}
        self._prefixes: set[tuple[str, str]] = set()
        self._stats = {"requests": 0, "ok": 0, "rate_limited": 0, "client_errors": 0,
                       "faults": {k: 0 for k in FAULT_KINDS}, "batches": 0}
        self.batches = BatchStore(self, batch_delay_s, batch_expire_s)
        self.batch_log: Callable[[str], None] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: Any, **kwargs: Any) -> SimServer:
        """From a SimConfig section (host, port, latency_ms, rpm, fault_rate, hang_s, seed,
        truth_log, batch_delay_s, batch_expire_s, and the world its `world` overrides name)."""
        kwargs.setdefault("world", world_from(cfg.world, prefix="sim.world."))
        kwargs.setdefault("hang_s", cfg.hang_s)
        kwargs.setdefault("truth_log", cfg.truth_log)
        kwargs.setdefault("batch_delay_s", cfg.batch_delay_s)
        kwargs.setdefault("batch_expire_s", cfg.batch_expire_s)
        return cls(cfg.host, cfg.port, cfg.latency_ms, cfg.rpm, cfg.fault_rate, cfg.seed, **kwargs)

    def _registry(self, name: str) -> Any:
        return models.get(name, self.world)

    @property
    def stats(self) -> dict:
        with self._lock:
            return {**self._stats, "faults": dict(self._stats["faults"])}

    def _count(self, field: str, fault: str | None = None) -> None:
        with self._lock:
            if fault:
                self._stats["faults"][fault] += 1
            else:
                self._stats[field] += 1

    def start(self) -> str:
        httpd = _Http((self.host, self.port), _Handler)
        httpd.sim = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sim-server", daemon=True)
        self._thread.start()
        host, port = httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def authorized(self, headers: Any) -> bool:
        if self._api_key is None:
            return True
        bearer = headers.get("authorization", "")
        return bearer == f"Bearer {self._api_key}" or headers.get("x-api-key") == self._api_key

    def next_fault(self, raw: bytes) -> str | None:
        if not self.fault_rate:
            return None
        digest = hashlib.sha256(raw).hexdigest()
        with self._lock:
            arrival = self._arrivals.get(digest, 0)
            self._arrivals[digest] = arrival + 1
        return fault_for(self.seed, digest, arrival, self.fault_rate, self.fault_kinds)

    def model(self, name: str) -> Any | None:
        try:
            return self._lookup(name)
        except (KeyError, ValueError):
            return None

    def prompt_cache(self, fmt: str, req: dict, delivered: bool = True) -> tuple[int, int]:
        """(cache_read, cache_write) tokens of a request: the first delivered answer for a given
        model and cacheable prefix writes it, every later one reads it (no expiry, no minimum
        length), so a run's cache totals depend neither on thread timing nor on injected faults.
        OpenAI bills no writes."""
        if req.get("cache_prefix") is None:
            return 0, 0
        digest, n = req["cache_prefix"]
        with self._lock:
            seen = (req["model"], digest) in self._prefixes
            if delivered:
                self._prefixes.add((req["model"], digest))
        if seen:
            return n, 0
        return 0, (n if fmt == "anthropic" else 0)

    def answer(self, fmt: str, model: Any, req: dict, delivered: bool = True) -> dict:
        """The response body the model gives for a parsed request, usage and cache fields included;
        `delivered=False` for a body a fault will garble (it leaves the prompt cache as it was)."""
        text, stop, n_in, n_out = self.generate(model, req)
        read, write = self.prompt_cache(fmt, req, delivered)
        if fmt == "openai":
            return openai_response(req["model"], text, stop, n_in, n_out, req["seed"], read)
        return anthropic_response(req["model"], text, stop, n_in, n_out, read, write)

    def generate(self, model: Any, req: dict) -> tuple[str, str, int, int]:
        """(text, stop, input_tokens, output_tokens); the text is cut to max_tokens. A model
        with `.respond` also says whether it followed a strategy and how many of its operations
        it carried out: that goes to the truth log only."""
        followed, carried_out = None, 0
        seed = model_seed(self.seed, req["seed"], req["temperature"])
        if hasattr(model, "respond"):
            reply = model.respond(req["messages"], temperature=req["temperature"], seed=seed)
            text, followed, carried_out = reply.text, reply.followed, reply.carried_out
        else:
            text = model.complete(req["messages"], max_tokens=req["max_tokens"],
                                  temperature=req["temperature"], seed=seed)
        stop = "end"
        if tokens.count(text) > req["max_tokens"]:
            text, stop = tokens.truncate(text, req["max_tokens"]), "max_tokens"
        if followed is not None and self.truth is not None:
            self.truth.record(req["model"], req["messages"], text, followed, carried_out)
        return text, stop, tokens.count_messages(req["messages"]), tokens.count(text)


class _Http(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    sim: SimServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that give up (timeouts) reset their connections: normal here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment: with Nagle on and two writes, the client's delayed
    # ACK would stall every response by ~40 ms.
    disable_nagle_algorithm = True
    wbufsize = -1
    server: _Http

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request logs would carry nothing useful and could grow without bound."""

    def _send(self, status: int, payload: bytes, headers: Mapping[str, str] = (),
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        for k, v in dict(headers).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has headers only, or the next response is garbled
            self.wfile.write(payload)

    def _error(self, fmt: str, status: int, message: str, headers: Mapping[str, str] = ()) -> None:
        body = openai_error(status, message) if fmt == "openai" else anthropic_error(status, message)
        self._send(status, json.dumps(body).encode(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What http.server refuses by itself (a request line or header it cannot parse or that is
        too long, an unknown HTTP version) is answered in JSON too. The connection closes: after
        such a request the server cannot tell where the next one starts."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # no version was read: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        path = (getattr(self, "path", None) or "").split("?", 1)[0]
        self._error(route_format(path), code, message or HTTPStatus(code).phrase, {"connection": "close"})

    def __getattr__(self, name: str) -> Any:
        """Every method but GET and POST (PUT, DELETE, PATCH, HEAD...) is answered 405 in JSON;
        http.server would answer 501 in HTML."""
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        fmt = route_format(self.path.split("?", 1)[0])
        if self._body(fmt, MAX_BODY_BYTES) is None:
            return
        self.server.sim._count("client_errors")
        self._error(fmt, 405, f"method {self.command} is not allowed; use POST {OPENAI_PATH} or {ANTHROPIC_PATH}",
                    {"allow": "GET, POST"})

    def _refuse(self, fmt: str, status: int, message: str) -> None:
        """A 4xx after which the connection closes, because the body was not read."""
        self.server.sim._count("client_errors")
        self.close_connection = True
        self._error(fmt, status, message, {"connection": "close"})
        self.wfile.flush()

    def _body(self, fmt: str, limit: int) -> bytes | None:
        """The request body, or None once a 4xx has refused one that cannot or may not be read."""
        if self.headers.get("transfer-encoding"):
            self._refuse(fmt, 411, "Transfer-Encoding is not supported: send the body with a Content-Length")
            return None
        lengths = self.headers.get_all("content-length") or ["0"]
        text = lengths[0].strip()
        if len(set(lengths)) > 1 or not (text.isascii() and text.isdigit()):
            self._refuse(fmt, 400, f"Content-Length must be one byte count >= 0, got {', '.join(lengths)}")
            return None
        n = int(text)
        if n > limit:
            self._refuse(fmt, 413, f"request body of {n} bytes exceeds this route's limit of {limit} bytes")
            if n <= DRAIN_BYTES:
                self._drain(n)
            return None
        return self.rfile.read(n)

    def _drain(self, n: int) -> None:
        """Read and drop `n` bytes of a refused body, giving up on a client that stops sending."""
        self.connection.settimeout(DRAIN_TIMEOUT_S)
        try:
            while n > 0 and (chunk := self.rfile.read(min(n, 1 << 16))):
                n -= len(chunk)
        except OSError:
            pass

    def do_POST(self) -> None:
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:
        try:
            if self.server.sim.batches.owns(self.path.split("?", 1)[0]):
                return self._batch("GET")
            self._error("openai", 404, f"no route GET {self.path}; POST {OPENAI_PATH} or {ANTHROPIC_PATH}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _batch(self, method: str, raw: bytes = b"") -> None:
        """A batch or file route (sim/batches.py): same auth and rate limit as the online routes."""
        sim = self.server.sim
        path = self.path.split("?", 1)[0]
        fmt = route_format(path)
        if not sim.authorized(self.headers):
            sim._count("client_errors")
            return self._error(fmt, 401, "invalid or missing API key")
        if sim.limiter is not None and (wait := sim.limiter.try_acquire(1)) > 0:
            sim._count("rate_limited")
            headers = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
            return self._error(fmt, 429, "Rate limit reached for requests per minute", headers)
        try:
            check_nesting(raw)
        except BadRequest as e:
            sim._count("client_errors")
            return self._error(fmt, 400, str(e))
        status, payload, content_type = sim.batches.handle(method, path, self.headers, raw)
        self._send(status, payload, content_type=content_type)

    def _serve(self) -> None:
        sim = self.server.sim
        path = self.path.split("?", 1)[0]
        fmt = {OPENAI_PATH: "openai", ANTHROPIC_PATH: "anthropic"}.get(path)
        sim._count("requests")
        raw = self._body(route_format(path), MAX_BATCH_BODY_BYTES if sim.batches.owns(path) else MAX_BODY_BYTES)
        if raw is None:
            return
        if sim.batches.owns(path):
            return self._batch("POST", raw)
        if fmt is None:
            sim._count("client_errors")
            return self._error("openai", 404, f"no route {path}; use {OPENAI_PATH} or {ANTHROPIC_PATH}")
        if not sim.authorized(self.headers):
            sim._count("client_errors")
            return self._error(fmt, 401, "invalid or missing API key")
        if sim.limiter is not None:
            wait = sim.limiter.try_acquire(1)
            if wait > 0:
                sim._count("rate_limited")
                headers = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
                return self._error(fmt, 429, "Rate limit reached for requests per minute", headers)
        try:
            if fmt == "anthropic" and not self.headers.get("anthropic-version"):
                raise BadRequest("anthropic-version: header is required")
            body = parse_json(raw)
            req = parse_openai_request(body) if fmt == "openai" else parse_anthropic_request(body)
        except BadRequest as e:
            sim._count("client_errors")
            return self._error(fmt, 400, str(e))
        model = sim.model(req["model"])
        if model is None:
            sim._count("client_errors")
            return self._error(fmt, 404, f"model {req['model']!r} does not exist")
        if sim.latency_s:
            time.sleep(sim.latency_s)
        fault = sim.next_fault(raw)
        if fault is not None:
            sim._count("faults", fault)
        if fault in ("timeout", "disconnect"):
            if fault == "timeout":
                time.sleep(sim.hang_s)
            self.close_connection = True
            return
        if fault == "server_error":
            status = 529 if fmt == "anthropic" else 503
            return self._error(fmt, status, "The server is overloaded; please retry")
        try:
            payload = sim.answer(fmt, model, req, delivered=fault is None)
        except Exception as e:  # a model bug must reach the client as a 500, not a dropped socket
            return self._error(fmt, 500, f"simulated model failed: {type(e).__name__}: {e}")
        data = json.dumps(payload).encode()
        if fault == "truncated":
            return self._send(200, data[: len(data) // 2])
        if fault == "malformed":
            return self._send(200, *malformed_body(fmt, len(raw)))
        sim._count("ok")
        self._send(200, data)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_forever(cfg_sim: Any) -> None:
    """Run the server from a SimConfig in the foreground until interrupted, printing its URL.

    SIGINT and SIGTERM both stop it cleanly, even when it was started with SIGINT ignored (as a
    shell script's background job is).
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    server = SimServer.from_config(cfg_sim)
    server.batch_log = lambda line: print(line, flush=True)
    root = server.start()
    try:  # an interrupt that lands while the URLs print also stops the server cleanly
        print(f"sim server listening on {root}", flush=True)
        print(f"  world: {json.dumps(summary_of(cfg_sim.world))}", flush=True)
        print(f"  OpenAI-compatible base_url: {sim_base_url(root, 'openai')}", flush=True)
        print(f"  Anthropic base_url:         {sim_base_url(root, 'anthropic')}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def run(cfg: Any, **_: Any) -> int:
    """`exectune serve-sim`: the server for the config's `sim` section."""
    serve_forever(cfg.sim)
    return 0
