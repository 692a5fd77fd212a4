"""The host-side call pool: every paid model call goes through here, then the cache, then the ledger.

`submit(Request) -> Future[Result]`. A future always resolves to a `Result`: either an answer
(`ok=True`) or an explicit failure with its error kind, never an empty string that a reward
could score. Per call, in order:

1. cache: an identical earlier call (same endpoint model, messages, sampling, sample index)
   is replayed at no cost; an identical call still in flight is shared, not paid twice;
2. budget: a call starts only if the spend so far (the run directory's ledger, earlier runs
   included), plus the estimated cost of the calls in flight, plus this one, stays within
   `budget_usd`; otherwise the pool stops for good (`stopped`, `stop_reason`) and every
   later call resolves to `budget_exceeded`, so the caller can checkpoint and exit;
3. circuit breaker per endpoint, then the 429 cool-down, RPM and TPM token buckets;
4. the HTTP call, with bounded concurrency (one worker thread per concurrent call);
5. retries with exponential backoff and jitter for 408/409/429/5xx, timeouts, connection
   errors and malformed bodies, honouring `Retry-After`; other 4xx fail at once;
6. on success the ledger line, holding the reply, is written before the cache entry, so a
   run killed in between, or a cache lost later, is refilled from the ledger, not paid again.

A stage is only as good as its calls: `raise_if_stopped` also ends a stage whose share of
failed calls exceeds `api.max_failure_share`, naming the endpoint and the error kinds, so an
unreachable or dying endpoint is never mistaken for a finished stage.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from exectune_jax import layout
from exectune_jax.api import providers
from exectune_jax.api.batching import Batcher, Item, check_modes, stage_mode
from exectune_jax.api.cache import Cache, cache_key
from exectune_jax.api.ledger import Ledger, cost_usd, load_prices
from exectune_jax.api.limits import CircuitBreaker, TokenBucket, backoff_delay, per_minute_bucket
from exectune_jax.config import SIM_URL
from exectune_jax.errors import UserError

log = logging.getLogger(__name__)

ENDPOINT_NAMES = ("core", "teacher", "judge", "core_strong", "core_next")
CHARS_PER_TOKEN = 3  # a deliberately low ratio, so budget and TPM estimates err high


class BudgetExceeded(UserError):
    """The run reached api.budget_usd; finished calls are cached, so raising it resumes cheaply."""


class TooManyFailures(UserError):
    """More of a stage's calls failed than api.max_failure_share allows."""


@dataclass(frozen=True)
class Request:
    endpoint: str  # a name in the pool's endpoints: core, teacher, judge, core_strong, core_next
    messages: tuple[tuple[str, str], ...] | list[dict]  # (role, content) pairs or OpenAI-style dicts
    max_tokens: int | None = None  # None = the endpoint's max_tokens
    temperature: float | None = None  # None = the endpoint's temperature
    sample_index: int = 0  # separates repeated samples of one prompt; sent as OpenAI `seed`
    stage: str = "default"  # ledger bucket


@dataclass(frozen=True)
class Result:
    ok: bool
    text: str | None  # None exactly when not ok
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    usd: float  # charged for this call; 0 for a replay
    cached: bool
    attempts: int  # HTTP calls made for this result (0 for a replay)
    error: str | None  # when not ok: rate_limit, server_error, timeout, connection, malformed,
    #                    client_error, budget_exceeded, circuit_open, halted (the run's records
    #                    could not be written), unfinished (a batch item never ran) or
    #                    batch_pending (the pool closed while its batch ran)
    detail: str = ""  # a one-line explanation when not ok (never contains a key)


def failed(kind: str, attempts: int, detail: str) -> Result:
    return Result(False, None, None, 0, 0, 0.0, False, attempts, kind, detail)


def normalize_messages(messages: Sequence[Any]) -> list[dict]:
    """(role, content) pairs or {"role", "content"} dicts -> a list of plain dicts."""
    out = []
    for m in messages:
        role, content = (m["role"], m["content"]) if isinstance(m, Mapping) else m
        out.append({"role": str(role), "content": str(content)})
    return out


def estimate_input_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """A high estimate of prompt tokens, before the server counts them."""
    return sum(len(m["content"]) // CHARS_PER_TOKEN + 8 for m in messages)


def check_endpoints(endpoints: Mapping[str, Any]) -> None:
    """Each endpoint names a known provider and a URL the pool can call."""
    for name, ep in endpoints.items():
        if ep.provider not in providers.PROVIDERS:
            raise UserError(f"api.{name}.provider is {ep.provider!r}; choose openai or anthropic")
        if ep.base_url == SIM_URL:
            raise UserError(f'api.{name}.base_url is "sim", the embedded simulated API, which the '
                            "pool does not start: run the stage inside `with "
                            "exectune_jax.sim.serving(cfg) as cfg:` (the CLI and the demo do), or "
                            f"set api.{name}.base_url to the API's URL")


class _Lane:
    """Per-endpoint flow control: limits and health are properties of one model/account."""

    def __init__(self, name: str, endpoint: Any, cfg: Any):
        self.name, self.endpoint = name, endpoint
        self.rpm: TokenBucket | None = per_minute_bucket(cfg.rpm)
        self.tpm: TokenBucket | None = per_minute_bucket(cfg.tpm)
        self.breaker = CircuitBreaker(cfg.circuit_breaker_failures, cfg.circuit_breaker_cooldown_s)
        self._cool_until = 0.0
        self._lock = threading.Lock()
        self.checked = False

    def cool_down(self, seconds: float) -> None:
        """After a 429/503 with Retry-After every worker on this lane waits, not only the one told."""
        with self._lock:
            self._cool_until = max(self._cool_until, time.monotonic() + seconds)

    def wait_turn(self, tokens: int) -> None:
        while (wait := self._cool_until - time.monotonic()) > 0:
            time.sleep(wait)
        if self.rpm:
            self.rpm.acquire(1)
        if self.tpm:
            self.tpm.acquire(tokens)


class Pool:
    """Bounded-concurrency, rate-limited, retrying, cached, budgeted calls to named endpoints.

    `close()` (or leaving the `with` block) waits for calls in flight and closes the cache and
    ledger it was given."""

    def __init__(self, endpoints: Mapping[str, Any], cfg: Any, *, cache: Cache | None,
                 ledger: Ledger, batch_log: str | Path | None = None):
        """`batch_log` (run_dir/batches.jsonl) enables batch mode for the stages that
        `api.mode`/`api.stage_modes` send as batches (api/batching.py); without it every call is online."""
        check_endpoints(endpoints)
        self._lanes = {name: _Lane(name, ep, cfg) for name, ep in endpoints.items()}
        self.cfg, self._cache, self.ledger = cfg, cache, ledger
        self._lock = threading.RLock()
        self._inflight: dict[str, Future] = {}
        self._reserved = 0.0
        self._rng = random.Random()
        self._counts: collections.Counter = collections.Counter()
        self._failures: collections.Counter = collections.Counter()
        self._failed_at: collections.Counter = collections.Counter()  # (endpoint, kind) -> count
        self._errors: collections.Counter = collections.Counter()
        self.stopped = False
        self.stop_reason: str | None = None
        self._halted: UserError | None = None  # a failed write of the ledger or the cache
        self._closed = False
        if batch_log is not None:
            check_modes(cfg)
        self._batcher = Batcher(self, Path(batch_log)) if batch_log is not None else None
        self._executor = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="api")

    # ---- public API -------------------------------------------------------------------------

    def submit(self, req: Request) -> Future:
        """Queue one call; the future resolves to a Result (never raises for API failures)."""
        lane = self._lane(req.endpoint)
        ep = lane.endpoint
        messages = normalize_messages(req.messages)
        max_tokens = req.max_tokens if req.max_tokens is not None else ep.max_tokens
        temperature = req.temperature if req.temperature is not None else ep.temperature
        key = cache_key(ep.provider, ep.model, messages, max_tokens=max_tokens,
                        temperature=temperature, sample_index=req.sample_index)
        with self._lock:
            if self._closed:
                raise RuntimeError("submit() on a closed Pool")
            self._counts["requests"] += 1
            hit = self._cache.get(key) if self._cache is not None else None
            if hit is not None:
                return _done(self._replay(req.stage, ep.model, hit))
            primary = self._inflight.get(key)
            if primary is not None:
                return self._share(primary, req.stage, ep.model)
            if self._batcher is not None and stage_mode(self.cfg, req.stage) == "batch":
                est_usd = cost_usd(self.ledger.prices.price(ep.model), estimate_input_tokens(messages),
                                   max_tokens)
                fut = self._batcher.submit(Item(key, lane, req.stage, messages, max_tokens, temperature,
                                                req.sample_index, est_usd))
            else:
                fut = self._executor.submit(self._call, lane, req.stage, messages, max_tokens,
                                            temperature, req.sample_index, key)
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._forget(key, f))
            return fut

    def map(self, reqs: Sequence[Request], *, desc: str | None = None) -> list[Result]:
        """Results in the order of `reqs`; a progress bar when `desc` is given."""
        futures = [self.submit(r) for r in reqs]
        with tqdm(total=len(futures), desc=desc, disable=desc is None, leave=False) as bar:
            for _ in as_completed(futures):
                bar.update()
        return [f.result() for f in futures]

    def has_endpoint(self, name: str) -> bool:
        return name in self._lanes

    @property
    def stats(self) -> dict:
        """requests, calls (HTTP attempts), retries, ok, cached, failures and attempt errors by kind."""
        with self._lock:
            return {
                **{k: self._counts[k] for k in ("requests", "calls", "retries", "ok", "cached")},
                "failures": dict(self._failures), "errors": dict(self._errors),
                "breaker_trips": sum(lane.breaker.trips for lane in self._lanes.values()),
                "batches": self._batcher.created if self._batcher is not None else 0,
                "usd": self.ledger.spent_usd(),
            }

    def raise_if_stopped(self) -> None:
        """For stage loops: after checkpointing, end the run with the stop reason, or when more
        calls failed than `api.max_failure_share` of the requests so far."""
        if self._halted is not None:
            raise self._halted
        if self.stopped:
            raise BudgetExceeded(self.stop_reason)
        with self._lock:
            requests = self._counts["requests"]
            failed_at = {k: v for k, v in self._failed_at.items() if k[1] != "budget_exceeded"}
        failed = sum(failed_at.values())
        if failed and failed > self.cfg.max_failure_share * requests:
            worst = max({name for name, _ in failed_at},
                        key=lambda n: sum(v for (e, _), v in failed_at.items() if e == n))
            kinds = ", ".join(f"{kind} {n}" for (name, kind), n in sorted(failed_at.items())
                              if name == worst)
            url = self._lanes[worst].endpoint.base_url
            raise TooManyFailures(
                f"{failed} of {requests} API calls failed, above api.max_failure_share="
                f"{self.cfg.max_failure_share:g}; endpoint {worst} ({url}): {kinds}. Nothing "
                "failed was scored; fix the endpoint and run the same command again to resume "
                "(answered calls are cached)")

    def checkpoint(self) -> None:
        """Make the cache and ledger totals durable (call before saving a training checkpoint)."""
        if self._cache is not None:
            self._cache.checkpoint()
        self.ledger.write_totals()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._batcher is not None:
            self._batcher.close()
        self._executor.shutdown(wait=True)
        self.ledger.close()
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals --------------------------------------------------------------------------

    def _lane(self, name: str) -> _Lane:
        lane = self._lanes.get(name)
        if lane is None:
            raise UserError(f"no endpoint {name!r} is configured; set api.{name} "
                            f"(configured: {', '.join(self._lanes) or 'none'})")
        if not lane.checked:  # user-fixable problems surface here, once, not as N failed calls
            ep = lane.endpoint
            if providers.missing_key(ep):
                raise UserError(f"api.{name}.api_key_env names {ep.api_key_env}, which is not set; "
                                f"export {ep.api_key_env} with your key (keys are read only from the environment)")
            self.ledger.prices.price(ep.model)
            lane.checked = True
        return lane

    def _forget(self, key: str, fut: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is fut:
                del self._inflight[key]

    def _replay(self, stage: str, model: str, hit: providers.Completion) -> Result:
        self.ledger.record(stage, model, hit.input_tokens, hit.output_tokens, cached=True)
        with self._lock:
            self._counts["cached"] += 1
        return Result(True, hit.text, hit.stop_reason, hit.input_tokens, hit.output_tokens, 0.0,
                      True, 0, None)

    def _share(self, primary: Future, stage: str, model: str) -> Future:
        """A duplicate of a call in flight waits for it and counts as a replay."""
        out: Future = Future()

        def relay(f: Future) -> None:
            if f.exception() is not None:
                out.set_exception(f.exception())
                return
            r = f.result()
            if r.ok:
                r = self._replay(stage, model, providers.Completion(
                    r.text, r.stop_reason, r.input_tokens, r.output_tokens))
            out.set_result(r)

        primary.add_done_callback(relay)
        return out

    def _reserve(self, usd: float) -> bool:
        budget = self.cfg.budget_usd
        with self._lock:
            if self.stopped:
                return False
            if budget is not None and self.ledger.spent_usd() + self._reserved + usd > budget:
                self.stopped = True
                self.stop_reason = (
                    f"budget reached: paid ${self.ledger.spent_usd():.6f}, with "
                    f"${self._reserved:.6f} reserved for calls in flight and ${usd:.6f} for the "
                    f"next, of api.budget_usd=${budget:.6f}; no new calls are started. Finished "
                    "calls are cached: raise api.budget_usd and run again to continue where this "
                    "run stopped")
                log.warning(self.stop_reason)
                return False
            self._reserved += usd
            return True

    def _release(self, usd: float) -> None:
        with self._lock:
            self._reserved -= usd

    @staticmethod
    def _result(completion: providers.Completion, usd: float, attempts: int) -> Result:
        return Result(True, completion.text, completion.stop_reason, completion.input_tokens,
                      completion.output_tokens, usd, False, attempts, None)

    def _fail(self, kind: str, attempts: int, detail: str, lane: _Lane) -> Result:
        with self._lock:
            self._failures[kind] += 1
            self._failed_at[lane.name, kind] += 1
        if kind not in ("budget_exceeded", "circuit_open", "halted"):
            log.warning("call to %s failed after %d attempt(s): %s", lane.name, attempts, detail)
        return failed(kind, attempts, detail)

    def _call(self, lane: _Lane, stage: str, messages: list[dict], max_tokens: int,
              temperature: float, seed: int, key: str) -> Result:
        ep, cfg = lane.endpoint, self.cfg
        est_tokens = estimate_input_tokens(messages) + max_tokens
        est_usd = cost_usd(self.ledger.prices.price(ep.model), est_tokens - max_tokens, max_tokens)
        attempts = 0
        while True:
            if not lane.breaker.allow():
                return self._fail("circuit_open", attempts, f"endpoint {lane.name} failed "
                                  f"{cfg.circuit_breaker_failures} times in a row; calls paused", lane)
            if not self._reserve(est_usd):
                lane.breaker.record(None)
                return self._fail("budget_exceeded" if self._halted is None else "halted",
                                  attempts, self.stop_reason or "", lane)
            try:
                lane.wait_turn(est_tokens)
                with self._lock:
                    self._counts["calls"] += 1
                attempts += 1
                completion = providers.complete(ep, messages, max_tokens=max_tokens,
                                                temperature=temperature, seed=seed)
            except providers.ApiError as e:
                self._release(est_usd)
                lane.breaker.record(None if e.kind == "rate_limit" else False)
                with self._lock:
                    self._errors[e.kind] += 1
                if not e.retryable or attempts > cfg.max_retries:
                    return self._fail(e.kind, attempts, e.message, lane)
                delay = backoff_delay(attempts, cfg.backoff_base_s, cfg.backoff_max_s,
                                      e.retry_after, self._rng.random())
                if e.retry_after is not None:
                    lane.cool_down(delay)
                log.debug("retrying %s in %.3fs after %s", lane.name, delay, e.message)
                with self._lock:
                    self._counts["retries"] += 1
                time.sleep(delay)
                continue
            except BaseException:
                self._release(est_usd)
                lane.breaker.record(None)
                raise
            lane.breaker.record(True)
            if lane.tpm:
                lane.tpm.settle(completion.input_tokens + completion.output_tokens - est_tokens)
            try:
                with self._lock:  # charge and un-reserve together: the budget never double counts
                    self._reserved -= est_usd
                    usd = self.ledger.record(stage, ep.model, completion.input_tokens,
                                             completion.output_tokens, cached=False,
                                             provider=ep.provider,
                                             cache_read=completion.cache_read_tokens,
                                             cache_write=completion.cache_write_tokens,
                                             key=key, text=completion.text,
                                             stop_reason=completion.stop_reason)
                    self._counts["ok"] += 1
                if self._cache is not None:
                    self._cache.put(key, ep.model, completion)
            except UserError as e:
                self._halt(e)
                raise
            return self._result(completion, usd, attempts)

    def _halt(self, error: UserError) -> None:
        """A record that cannot be written (a full disk, a damaged cache) stops every later call:
        a call paid while its reply cannot be kept would be paid again on the next run."""
        with self._lock:
            if self._halted is None:
                self._halted, self.stopped, self.stop_reason = error, True, str(error)
                log.warning("%s", error)


def _done(result: Result) -> Future:
    fut: Future = Future()
    fut.set_result(result)
    return fut


def open_cache(path: Path, ledger: Ledger) -> Cache:
    """The run's call cache, holding every reply the ledger records as paid: a cache deleted,
    moved aside or short of what was paid (a write that failed after the charge) is refilled
    from the ledger rather than paid again."""
    cache = Cache(path)
    try:
        added = cache.fill(ledger.paid_replies())
    except BaseException:
        cache.close()
        raise
    if added:
        log.warning("%s lacked %d paid replies; restored them from %s", path, added, ledger.path)
    return cache


def open_pool(cfg: Any, run_dir: str | Path, *, batch: bool = False) -> Pool:
    """The pool for a run: cache at run_dir/calls.sqlite, ledger at run_dir/ledger.jsonl.

    `batch=True` (stages that may wait: sample, eval) lets `api.mode`/`api.stage_modes` send
    calls through the batch APIs, recorded in run_dir/batches.jsonl; RL stays online.

    `cfg` is the whole Config or its `api` section alone. Every endpoint's base_url is a URL:
    a config naming the embedded sim ("sim") is served first (`exectune_jax.sim.serving`)."""
    api = getattr(cfg, "api", cfg)
    endpoints = {n: ep for n in ENDPOINT_NAMES if (ep := getattr(api, n, None)) is not None}
    check_endpoints(endpoints)  # before the run's files are opened
    run_dir = Path(run_dir)
    ledger = Ledger(layout.ledger(run_dir), load_prices(api.prices))
    cache = open_cache(layout.call_cache(run_dir), ledger)
    return Pool(endpoints, api, cache=cache, ledger=ledger,
                batch_log=layout.batch_log(run_dir) if batch else None)
