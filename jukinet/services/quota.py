"""Per-agency quotas: requests per second (token bucket) and items per day (reset at midnight JST)."""

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jukinet.domain.agency import Agency
from jukinet.domain.errors import QuotaExceeded
from jukinet.domain.validate import JST


@dataclass
class _State:
    tokens: float
    refilled: float
    day: dt.date
    items: int = 0


@dataclass
class Quotas:
    """Limits from the agency registry; 0 means unlimited. `clock` returns seconds (monotonic)."""

    clock: Callable[[], float] = time.monotonic
    today: Callable[[], dt.date] = field(default=lambda: dt.datetime.now(JST).date())
    _state: dict[str, _State] = field(default_factory=dict)

    def preload(self, agency_id: str, items_today: int) -> None:
        """Items already provided today (from the provision log), so a restart does not reset the quota."""
        self._state[agency_id] = _State(0.0, self.clock(), self.today(), items_today)

    def items_left(self, agency: Agency) -> int | None:
        """Items the agency may still receive today; None when its daily quota is unlimited."""
        if agency.items_per_day <= 0:
            return None
        state = self._state.get(agency.id)
        if state is None or state.day != self.today():
            return agency.items_per_day
        return max(0, agency.items_per_day - state.items)

    def reserve(self, agency: Agency, wanted: int) -> int:
        """Charges up to `wanted` items of today's quota (no request) and returns how many: 0 when none is
        left. Give back what was not provided with `refund`."""
        left = self.items_left(agency)
        granted = wanted if left is None else min(wanted, left)
        if granted:
            self.charge(agency, granted, rate=False)
        return granted

    def refund(self, agency: Agency, items: int) -> None:
        """Gives back items charged for records that were not provided after all (a reservation)."""
        state = self._state.get(agency.id)
        if state is not None and state.day == self.today():
            state.items = max(0, state.items - items)

    def charge(self, agency: Agency, items: int, *, rate: bool = True) -> None:
        """Counts one request (when `rate`) and `items` records; QuotaExceeded with a retry hint otherwise."""
        now = self.clock()
        state = self._state.get(agency.id)
        if state is None:
            state = self._state[agency.id] = _State(float(agency.requests_per_second), now, self.today())
        if state.day != self.today():
            state.day, state.items = self.today(), 0
        if rate and agency.requests_per_second > 0:
            burst = float(agency.requests_per_second)
            state.tokens = min(burst, state.tokens + (now - state.refilled) * agency.requests_per_second)
            state.refilled = now
            if state.tokens < 1.0:
                wait = (1.0 - state.tokens) / agency.requests_per_second
                raise QuotaExceeded(
                    f"agency {agency.id} is over {agency.requests_per_second:g} requests/s; retry in {wait:.2f} s",
                    wait,
                )
            state.tokens -= 1.0
        if agency.items_per_day > 0 and items > agency.items_per_day:
            raise QuotaExceeded(
                f"a request of {items} items is over agency {agency.id}'s whole daily quota of "
                f"{agency.items_per_day}; split it into smaller requests",
                None,
            )
        if agency.items_per_day > 0 and state.items + items > agency.items_per_day:
            midnight = dt.datetime.combine(self.today() + dt.timedelta(days=1), dt.time(), JST)
            wait = max(1.0, (midnight - dt.datetime.now(JST)).total_seconds())
            raise QuotaExceeded(
                f"agency {agency.id} has {agency.items_per_day - state.items} of {agency.items_per_day} items left "
                f"today; retry after midnight JST (in {wait:.0f} s) or ask for fewer",
                wait,
            )
        state.items += items


@dataclass
class _Window:
    started: float
    count: int = 0
    baseline: float = 0.0  # requests per second, exponentially weighted over past windows
    windows: int = 0


@dataclass
class RateWatch:
    """Flags an agency whose request rate jumps far above its own baseline (an intrusion signal).

    Rates are counted per `window_s`; after `warmup` windows a window whose rate exceeds `factor` times
    the baseline (and at least `floor` requests/s) is reported once."""

    clock: Callable[[], float] = time.monotonic
    window_s: float = 10.0
    factor: float = 10.0
    floor: float = 5.0
    warmup: int = 3
    _windows: dict[str, _Window] = field(default_factory=dict)

    def observe(self, agency_id: str) -> float | None:
        """Counts one request; returns the anomalous rate when this request makes the window anomalous."""
        now = self.clock()
        w = self._windows.setdefault(agency_id, _Window(now))
        while now - w.started >= self.window_s:
            rate = w.count / self.window_s
            w.baseline = rate if w.windows == 0 else 0.8 * w.baseline + 0.2 * rate
            w.windows += 1
            w.started += self.window_s
            w.count = 0
        w.count += 1
        rate = w.count / self.window_s
        threshold = max(self.floor, self.factor * w.baseline)
        if w.windows >= self.warmup and rate > threshold and (w.count - 1) / self.window_s <= threshold:
            return rate
        return None
