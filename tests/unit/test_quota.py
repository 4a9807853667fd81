"""Per-agency quotas with a fake clock: request rate (token bucket) and items per day."""

import datetime as dt

import pytest

from jukinet.domain.agency import Agency
from jukinet.domain.errors import QuotaExceeded
from jukinet.services.quota import Quotas, RateWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.day = dt.date(2026, 11, 22)


def _quotas(clock: Clock) -> Quotas:
    return Quotas(clock=lambda: clock.now, today=lambda: clock.day)


def test_requests_per_second_refill_over_time() -> None:
    clock = Clock()
    quotas = _quotas(clock)
    agency = Agency("a", "A", {}, requests_per_second=2)
    quotas.charge(agency, 1)
    quotas.charge(agency, 1)
    with pytest.raises(QuotaExceeded) as caught:
        quotas.charge(agency, 1)
    assert caught.value.retry_after_s is not None
    assert 0 < caught.value.retry_after_s <= 0.5
    clock.now += 0.5
    quotas.charge(agency, 1)


def test_items_per_day_reset_on_a_new_day_and_survive_restarts_via_preload() -> None:
    clock = Clock()
    agency = Agency("a", "A", {}, items_per_day=10)
    quotas = _quotas(clock)
    quotas.preload("a", 8)
    quotas.charge(agency, 2)
    with pytest.raises(QuotaExceeded, match="0 of 10 items left"):
        quotas.charge(agency, 1)
    clock.day += dt.timedelta(days=1)
    quotas.charge(agency, 10)


def test_zero_means_unlimited() -> None:
    quotas = _quotas(Clock())
    agency = Agency("a", "A", {})
    for _ in range(1000):
        quotas.charge(agency, 1000)


def test_a_rate_jump_far_above_the_agency_baseline_is_flagged_once() -> None:
    clock = Clock()
    watch = RateWatch(clock=lambda: clock.now, window_s=10, factor=10, floor=5, warmup=3)
    for _ in range(4):  # four quiet windows of 1 request/s
        for _ in range(10):
            assert watch.observe("pension") is None
            clock.now += 1
    flagged = [watch.observe("pension") for _ in range(200)]  # 200 requests within a second
    hits = [r for r in flagged if r is not None]
    assert len(hits) == 1
    assert hits[0] > 10
    assert watch.observe("passport") is None  # baselines are per agency


def test_a_request_over_the_whole_daily_quota_is_refused_without_a_retry_time() -> None:
    """Waiting for midnight cannot help a request larger than the day's quota: no retry time, split it."""
    agency = Agency("a", "A", {}, items_per_day=10)
    quotas = _quotas(Clock())
    with pytest.raises(QuotaExceeded, match="split it") as caught:
        quotas.charge(agency, 11)
    assert caught.value.retry_after_s is None
    quotas.charge(agency, 10)  # nothing was counted for the refused request


def test_items_reserved_and_given_back_count_only_what_was_provided() -> None:
    clock = Clock()
    agency = Agency("a", "A", {}, items_per_day=10)
    quotas = _quotas(clock)
    assert quotas.items_left(agency) == 10
    assert quotas.reserve(agency, 8) == 8  # reserved for a feed batch
    quotas.refund(agency, 5)  # only 3 were delivered
    assert quotas.items_left(agency) == 7
    assert quotas.reserve(agency, 500) == 7  # no more than is left
    assert quotas.reserve(agency, 500) == 0
    clock.day += dt.timedelta(days=1)
    assert quotas.items_left(agency) == 10
    quotas.refund(agency, 4)  # yesterday's reservation: today's count is untouched
    assert quotas.items_left(agency) == 10
    assert quotas.items_left(Agency("b", "B", {})) is None  # unlimited
    assert quotas.reserve(Agency("b", "B", {}), 500) == 500
