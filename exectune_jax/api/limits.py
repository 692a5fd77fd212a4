"""Flow control for the call pool: token buckets, the circuit breaker and the backoff schedule.

Kept apart from the pool so each piece can be checked with a fake clock and hand-computed numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def backoff_delay(retry: int, base_s: float, max_s: float, retry_after: float | None, u: float) -> float:
    """Seconds to wait before retry number `retry` (1-based), given a uniform draw `u` in [0, 1).

    Without a server hint: exponential, capped, with "equal jitter" (half fixed, half random) so
    many workers that failed together do not come back together. With `Retry-After`: at least
    what the server asked for, plus up to 10% so waiters spread out."""
    if retry_after is not None:
        return retry_after * (1.0 + 0.1 * u)
    step = min(max_s, base_s * 2.0 ** (retry - 1))
    return step * (0.5 + 0.5 * u)


class TokenBucket:
    """`rate` units per second, holding at most `capacity`. `acquire(n)` blocks until the bucket
    can pay `n` (a request larger than the capacity waits for a full bucket and goes into debt,
    so an oversized request is slowed, never refused). `settle(n)` charges a correction later,
    e.g. actual minus estimated tokens."""

    def __init__(self, rate: float, capacity: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate, self.capacity = rate, capacity
        self._clock, self._sleep = clock, sleep
        self._level = capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_acquire(self, n: float) -> float:
        """Take `n` and return 0, or return the seconds to wait before trying again."""
        with self._lock:
            self._refill()
            need = min(n, self.capacity)
            if self._level >= need - 1e-9:  # tolerance: float refill must not stall a waiter
                self._level -= n
                return 0.0
            return (need - self._level) / self.rate

    def acquire(self, n: float) -> None:
        while (wait := self.try_acquire(n)) > 0:
            self._sleep(wait)

    def settle(self, n: float) -> None:
        with self._lock:
            self._refill()
            self._level = min(self.capacity, self._level - n)


def per_minute_bucket(per_minute: float | None) -> TokenBucket | None:
    """A bucket for an RPM or TPM limit, with one second's worth of burst; None = unlimited."""
    if not per_minute:
        return None
    rate = per_minute / 60.0
    return TokenBucket(rate, max(1.0, rate))


class CircuitBreaker:
    """Stops calls to an endpoint that keeps failing.

    Closed: calls go through; `threshold` failures in a row open it. Open: `allow()` is False
    until `cooldown_s` has passed. Then half-open: one probe call at a time is allowed; its
    success closes the breaker, its failure opens it for another cooldown. Rate limiting is not
    a failure here: a 429 means the service is up and asking us to slow down."""

    def __init__(self, threshold: int, cooldown_s: float, *,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self._lock = threading.Lock()
        self.trips = 0

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "open" if self._clock() < self._open_until else "half_open"

    def allow(self) -> bool:
        with self._lock:
            if self._open_until is None:
                return True
            if self._clock() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def record(self, success: bool | None) -> None:
        """The outcome of an allowed call; None when it says nothing about health (a 429)."""
        with self._lock:
            self._probing = False
            if success is None:
                return
            if success:
                self._failures, self._open_until = 0, None
                return
            self._failures += 1
            if self._open_until is not None or self._failures >= self.threshold:
                self._open_until = self._clock() + self.cooldown_s
                self.trips += 1
