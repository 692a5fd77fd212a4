"""Backoff schedule, token buckets and circuit breaker, on a fake clock with hand-checked numbers."""

from __future__ import annotations

import pytest

from exectune_jax.api.limits import CircuitBreaker, TokenBucket, backoff_delay, per_minute_bucket


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_backoff_doubles_per_retry_with_equal_jitter_and_caps():
    assert backoff_delay(1, 0.5, 10.0, None, 0.0) == 0.25  # half of 0.5
    assert backoff_delay(1, 0.5, 10.0, None, 0.999999) == pytest.approx(0.5)
    assert backoff_delay(3, 0.5, 10.0, None, 0.0) == 1.0  # 0.5 * 2**2 / 2
    assert backoff_delay(10, 0.5, 10.0, None, 1.0) == 10.0  # capped


def test_backoff_waits_at_least_retry_after_even_above_the_cap():
    assert backoff_delay(1, 0.5, 10.0, 30.0, 0.0) == 30.0
    assert backoff_delay(1, 0.5, 10.0, 30.0, 0.5) == pytest.approx(31.5)


def test_bucket_allows_its_capacity_at_once_then_paces_at_its_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=3.0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        bucket.acquire(1)
    assert clock.t == 100.0
    bucket.acquire(1)
    assert clock.t == pytest.approx(100.5)
    for _ in range(4):
        bucket.acquire(1)
    assert clock.t == pytest.approx(102.5)  # 5 more tokens at 2/s after the burst


def test_request_larger_than_capacity_waits_for_a_full_bucket_and_goes_into_debt():
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, capacity=10.0, clock=clock, sleep=clock.sleep)
    bucket.acquire(25)  # full bucket: goes now, level -15
    assert clock.t == 100.0
    bucket.acquire(1)  # needs 16 tokens of refill
    assert clock.t == pytest.approx(101.6)


def test_settle_charges_the_difference_between_actual_and_estimated_tokens():
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=10.0, clock=clock, sleep=clock.sleep)
    bucket.acquire(5)
    bucket.settle(3)  # the call used 8, not 5
    assert bucket.try_acquire(3) == pytest.approx(1.0)
    bucket.settle(-10)  # refunds never exceed the capacity
    assert bucket.try_acquire(10) == 0.0


def test_per_minute_bucket_is_none_when_unlimited_and_has_one_second_of_burst():
    assert per_minute_bucket(None) is None
    b = per_minute_bucket(600)
    assert (b.rate, b.capacity) == (10.0, 10.0)
    assert per_minute_bucket(30).capacity == 1.0


def test_breaker_opens_after_threshold_failures_in_a_row_and_a_success_resets_the_count():
    clock = FakeClock()
    br = CircuitBreaker(3, 5.0, clock=clock)
    for _ in range(2):
        br.record(False)
    br.record(True)
    for _ in range(2):
        br.record(False)
    assert br.state == "closed" and br.allow()
    br.record(False)
    assert br.state == "open" and not br.allow() and br.trips == 1


def test_breaker_ignores_rate_limits():
    br = CircuitBreaker(2, 5.0, clock=FakeClock())
    for _ in range(10):
        br.record(None)
    assert br.state == "closed"


def test_half_open_breaker_lets_one_probe_through_and_closes_or_reopens_on_its_outcome():
    clock = FakeClock()
    br = CircuitBreaker(1, 5.0, clock=clock)
    br.record(False)
    clock.t += 5.0
    assert br.state == "half_open"
    assert br.allow() and not br.allow()  # one probe at a time
    br.record(False)
    assert br.state == "open" and br.trips == 2
    clock.t += 5.0
    assert br.allow()
    br.record(True)
    assert br.state == "closed" and br.allow() and br.allow()


def test_a_probe_that_ends_without_a_verdict_frees_the_probe_slot():
    clock = FakeClock()
    br = CircuitBreaker(1, 1.0, clock=clock)
    br.record(False)
    clock.t += 1.0
    assert br.allow()
    br.record(None)  # e.g. a 429: no health information
    assert br.allow()
