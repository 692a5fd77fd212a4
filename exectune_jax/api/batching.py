"""Batch mode of the call pool: requests wait a moment, go out together through the provider's
batch API (half price, answers within a day), and come back through the same cache and ledger.

Per batch, in order:
1. requests submitted within `LINGER_S` of each other (one `pool.map`) are cut into one batch
   per endpoint, at most the provider's size limit each; the budget reserves their estimated
   batch-price cost while they are in flight;
2. the batch is created and its id, with every item's cache key (its custom_id) and stage, is
   appended to run_dir/batches.jsonl before anything else happens, so a killed run re-attaches
   to it on restart instead of paying for the same work again;
3. it is polled with exponential backoff (`api.batch_poll_s` doubling to `api.batch_poll_max_s`);
4. once ended, each result is mapped back by custom_id: answers are written to the ledger at the
   batch price, then to the cache; items that errored are retried by the pool's retry classes in
   a follow-up batch (non-retryable kinds fail at once); items without a result (expired,
   cancelled, or on a malformed results line) are resubmitted; nothing unanswered is scored;
5. a `done` line closes the batch's record.

On restart, every batch recorded without `done` is polled again; its answers fill the cache
whether or not this run asks for them, and a request for one of its items waits for it rather
than going out again. Items of a re-attached batch that failed are resubmitted only when this
run asks for them; so are the items of a batch the provider no longer knows (HTTP 404).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exectune_jax.api import batches, providers
from exectune_jax.api.limits import backoff_delay
from exectune_jax.errors import UserError
from exectune_jax.io import append_line, cut_torn_tail, read_jsonl

log = logging.getLogger(__name__)

MODES = ("online", "batch")
LINGER_S = 0.05  # a pause this long in submissions closes the batch being gathered


def stage_mode(api: Any, stage: str) -> str:
    """`api.stage_modes` by the stage's last then first dotted part ("sample.core_alone" ->
    core_alone, then sample), else `api.mode`."""
    parts = stage.split(".")
    for name in (parts[-1], parts[0]):
        if name in api.stage_modes:
            return api.stage_modes[name]
    return api.mode


def check_modes(api: Any) -> None:
    if api.mode not in MODES:
        raise UserError(f"api.mode is {api.mode!r}; choose online or batch")
    for stage, mode in api.stage_modes.items():
        if mode not in MODES:
            raise UserError(f"api.stage_modes.{stage} is {mode!r}; choose online or batch")


@dataclass
class Item:
    key: str
    lane: Any
    stage: str
    messages: list[dict]
    max_tokens: int
    temperature: float
    seed: int
    est_usd: float  # online list-price estimate
    future: Future = field(default_factory=Future)
    attempts: int = 0


@dataclass
class _Running:
    id: str
    lane: Any
    stages: dict[str, str]  # custom_id -> ledger stage
    reserved: float
    waiting: dict[str, Item] = field(default_factory=dict)


class Batcher:
    """The batch half of a Pool; `pool` supplies lanes, cache, ledger, budget and counters."""

    def __init__(self, pool: Any, path: Path):
        self.pool, self.path = pool, Path(path)
        self._cond = threading.Condition()
        self._pending: list[Item] = []
        self._last_add = 0.0
        self._running: dict[str, _Running] = {}  # batch id -> batch
        self._attached: dict[str, _Running] = {}  # custom_id -> a batch that holds it
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._file_lock = threading.Lock()
        self.created = 0
        self._reattach()
        self._start(self._gather, "api-batcher")

    # ---- submitting ---------------------------------------------------------------------------

    def submit(self, item: Item) -> Future:
        with self._cond:
            running = self._attached.get(item.key)
            if running is not None:  # a re-attached batch holds this work: wait for it
                running.waiting[item.key] = item
                return item.future
            hit = self.pool._cache.get(item.key) if self.pool._cache is not None else None
            if hit is not None:  # answered by a re-attached batch since the pool looked
                item.future.set_result(self.pool._replay(item.stage, item.lane.endpoint.model, hit))
                return item.future
            self._enqueue(item)
        return item.future

    def _enqueue(self, item: Item) -> None:
        with self._cond:
            self._pending.append(item)
            self._last_add = time.monotonic()
            self._cond.notify_all()

    def _gather(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing.is_set():
                    self._cond.wait()
                if self._closing.is_set():
                    return
                while (wait := self._last_add + LINGER_S - time.monotonic()) > 0:
                    self._cond.wait(wait)
                items, self._pending = self._pending, []
            by_lane: dict[str, list[Item]] = {}
            for item in items:
                by_lane.setdefault(item.lane.name, []).append(item)
            for lane_items in by_lane.values():
                limit = batches.MAX_REQUESTS[lane_items[0].lane.endpoint.provider]
                for i in range(0, len(lane_items), limit):
                    chunk = lane_items[i:i + limit]
                    self._start(lambda c=chunk: self._launch(c), "api-batch")

    def _start(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ---- one batch ----------------------------------------------------------------------------

    def _launch(self, items: list[Item]) -> None:
        lane = items[0].lane
        ep = lane.endpoint
        reserve = sum(i.est_usd for i in items) * self.pool.ledger.prices.discounts(ep.provider).batch
        if not self.pool._reserve(reserve):
            for item in items:
                item.future.set_result(self.pool._fail("budget_exceeded", item.attempts,
                                                       self.pool.stop_reason or "", lane))
            return
        bodies = [(i.key, providers.request_body(ep, i.messages, max_tokens=i.max_tokens,
                                                 temperature=i.temperature, seed=i.seed)) for i in items]
        for item in items:
            item.attempts += 1
        try:
            batch_id = self._managed(lambda: batches.create(ep, bodies), lane)
        except providers.ApiError as e:
            self.pool._release(reserve)
            for item in items:
                item.future.set_result(self.pool._fail(e.kind, item.attempts, e.message, lane))
            return
        running = _Running(batch_id, lane, {i.key: i.stage for i in items}, reserve,
                           {i.key: i for i in items})
        self._append({"event": "created", "id": batch_id, "lane": lane.name, "model": ep.model,
                      "provider": ep.provider, "reserved_usd": reserve, "items": running.stages})
        with self._cond:
            self._running[batch_id] = running
            self.created += 1
        log.info("batch %s: %d requests to %s", batch_id, len(items), lane.name)
        self._follow(running)

    def _follow(self, running: _Running) -> None:
        """Poll until the batch ends, then settle every item; on close, leave it recorded."""
        ep, cfg = running.lane.endpoint, self.pool.cfg
        delay = cfg.batch_poll_s
        try:
            while True:
                status = self._managed(lambda: batches.status(ep, running.id), running.lane)
                if status.ended:
                    break
                if self._closing.wait(delay):
                    return
                delay = min(delay * 2.0, cfg.batch_poll_max_s)
            outcomes = {} if status.failed else self._managed(lambda: batches.results(ep, status), running.lane)
        except providers.ApiError as e:
            if e.status == 404:  # the provider does not know it (another account, a restarted sim)
                log.warning("batch %s is unknown to %s; its requests go out again", running.id, ep.base_url)
                self._append({"event": "done", "id": running.id, "lost": True})
                self._settle(running, {}, None)
                return
            # the batch is still recorded: a rerun re-attaches to it
            log.warning("batch %s: %s; rerun to re-attach to it", running.id, e.message)
            self._settle(running, {}, e, retry=False)
            return
        except _Closing:
            return
        refused = (providers.ApiError("client_error", f"batch {running.id} failed validation: "
                                      f"{json.dumps(status.raw.get('errors'))[:200]}")
                   if status.failed else None)
        self._settle(running, outcomes, refused)
        self._append({"event": "done", "id": running.id})

    def _settle(self, running: _Running, outcomes: dict, refused: providers.ApiError | None, *,
                retry: bool = True) -> None:
        """Charge, cache and hand out every answer; retry or fail the rest. The reservation is
        released last, so the budget never sees the batch's cost as neither reserved nor spent.
        (Lock order: the pool's lock may be held when this batcher's is taken, never the reverse.)"""
        pool, ep = self.pool, running.lane.endpoint
        again: list[Item] = []
        for key, stage in running.stages.items():
            outcome = outcomes.get(key)
            with self._cond:  # answer cached before the key leaves _attached: submit() sees one or the other
                if isinstance(outcome, providers.Completion):
                    usd = pool.ledger.record(stage, ep.model, outcome.input_tokens, outcome.output_tokens,
                                             cached=False, provider=ep.provider,
                                             cache_read=outcome.cache_read_tokens,
                                             cache_write=outcome.cache_write_tokens, batch=True,
                                             key=key, text=outcome.text,
                                             stop_reason=outcome.stop_reason)
                    if pool._cache is not None:
                        pool._cache.put(key, ep.model, outcome)
                item = running.waiting.pop(key, None)
                if self._attached.get(key) is running:
                    del self._attached[key]
            if isinstance(outcome, providers.Completion):
                with pool._lock:
                    pool._counts["ok"] += 1
                    pool._counts["calls"] += 1
                if item is not None:
                    item.future.set_result(pool._result(outcome, usd, item.attempts))
                continue
            if item is None:
                continue
            error = refused or outcome or providers.ApiError(
                "unfinished", f"batch {running.id} ended without a result for this request")
            with pool._lock:
                pool._errors[error.kind] += 1
            if retry and (error.retryable or error.kind == "unfinished") and \
                    item.attempts <= pool.cfg.max_retries and not self._closing.is_set():
                with pool._lock:
                    pool._counts["retries"] += 1
                again.append(item)
            else:
                item.future.set_result(pool._fail(error.kind, item.attempts, error.message, running.lane))
        with self._cond:
            self._running.pop(running.id, None)
        pool._release(running.reserved)
        for item in again:
            self._enqueue(item)

    def _managed(self, call: Callable[[], Any], lane: Any) -> Any:
        """A management call (create, status, results) with the pool's retry rules."""
        attempts = 0
        while True:
            if self._closing.is_set():
                raise _Closing
            try:
                return call()
            except providers.ApiError as e:
                attempts += 1
                if not e.retryable or attempts > self.pool.cfg.max_retries:
                    raise
                cfg = self.pool.cfg
                delay = backoff_delay(attempts, cfg.backoff_base_s, cfg.backoff_max_s, e.retry_after,
                                      self.pool._rng.random())
                if self._closing.wait(delay):
                    raise _Closing from None

    # ---- the record in run_dir --------------------------------------------------------------------

    def _append(self, row: dict) -> None:
        line = (json.dumps(row) + "\n").encode()
        with self._file_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                append_line(fd, self.path, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _records(self) -> list[dict]:
        if not self.path.exists():
            return []
        cut_torn_tail(self.path)  # a crash mid-write tore the last line
        aside = "move the file aside (in-flight batches it names will then be paid again)"
        rows, done = [], set()
        for lineno, row in read_jsonl(self.path, hint=aside):
            try:
                if row["event"] == "done":
                    done.add(row["id"])
                else:
                    rows.append(row)
            except (KeyError, TypeError):
                raise UserError(f"{self.path}:{lineno}: not a batch record; {aside}") from None
        return [r for r in rows if r["id"] not in done]

    def _reattach(self) -> None:
        for rec in self._records():
            lane = self.pool._lanes.get(rec["lane"])
            if lane is None or lane.endpoint.model != rec["model"] or lane.endpoint.provider != rec["provider"]:
                log.warning("batch %s was sent to %s (%s); that endpoint is not configured now, so it "
                            "is left alone", rec["id"], rec["lane"], rec["model"])
                continue
            self.pool._reserve(rec["reserved_usd"])
            running = _Running(rec["id"], lane, dict(rec["items"]), rec["reserved_usd"])
            self._running[running.id] = running
            for key in running.stages:
                self._attached[key] = running
            log.info("re-attached to batch %s (%d requests)", running.id, len(running.stages))
            self._start(lambda r=running: self._follow(r), "api-batch")

    def close(self) -> None:
        """Stop polling: batches still processing stay recorded for the next run; requests still
        waiting for them resolve as `batch_pending`."""
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        with self._cond:
            waiting = [i for r in self._running.values() for i in r.waiting.values()] + self._pending
            self._pending = []
        for item in waiting:
            if not item.future.done():
                item.future.set_result(self.pool._fail(
                    "batch_pending", item.attempts, "the batch holding this request is still processing; "
                    "rerun to re-attach to it", item.lane))


class _Closing(Exception):
    """The pool is closing: stop polling, keep the batch recorded."""
