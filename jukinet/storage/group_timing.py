"""When a LoopBatcher's group of calls should commit: how long to linger, and when not to wait at all.

Pure policy (no I/O, clock passed in), so it can be tested without a loop or a database.

Linger in proportion to the transaction. The calls of a group reach the batcher one by one: the event loop
that runs the transaction also accepts each call and runs its handler, so gathering k calls takes k times
the loop's work per call, however many callers are waiting. How long a linger gathers a useful group
therefore depends on the machine's speed, and so does the transaction's fixed cost (BEGIN, the log chain's
head, the commit's fsync) that the group shares. The linger follows the measured transaction:
`per_transaction` (6) times an exponentially weighted mean of recent group transactions, within
[`min_s`, `max_s`].

Measured with bench/provision.py --quick on a slow stretch of the 2-vCPU VM (2026-12-02, eleventh session; a
group transaction took 1.4-2.2 ms there, fsync alone 0.37 ms): a fixed 2 ms linger gathered 2.4-3.2 calls
a group at concurrency 16 and the center answered 0.34-0.35 of the bare handler; 3 x the transaction
(about 6 ms there) gathered 11-13 and answered 0.49-0.55. A fixed 6 ms was worse (0.43): the time is right
only relative to the transaction. On the fast stretch of the ninth session 2 ms had beaten 5 ms, when a
transaction took well under 1 ms: there 3 x the transaction is about what won.

Since prompt mode ends when the loop stayed busy (LoopBatcher, thirteenth session), 6 x the transaction beats
3 x: five interleaved `--quick` pairs (2026-12-03, bare handler 3,070-3,660 calls/s at c=16) gave unary_ratio
0.624 / 0.612 / 0.572 / 0.622 / 0.607 against 0.557 / 0.620 / 0.545 / 0.613 / 0.601, and the worst p99 15.4-17.2
against 16.2-25.1 ms, better in every pair; the CPU per call falls (cpu_bound_ratio 0.80-0.85 against
0.67-0.71), since a group of 13-16 calls shares one commit where 3 x gathered 6-9. The 8 ms cap keeps the
linger below the p99 target on slow stretches.

Do not wait for callers that are not coming. With a steady set of callers the groups repeat their size:
16 callers in flight, a group of 13, the other 3 arriving meanwhile, and so on. Once a group holds as many
calls as the largest group that lingered to its end (or filled up) within the last `window_s`, it commits
without lingering further: the rest of the linger would leave the loop idle. Only groups that lingered to
the end count as evidence, so early commits cannot shrink the size they wait for (a lull cannot break the
groups into ever smaller pieces), and once a window passes without one, the next group lingers in full
and measures again. Interleaved with the linger alone (same session, two runs
each): 0.55 / 0.55 against 0.50 / 0.49, the vCPUs 71 % busy against 62 %."""

from collections import deque
from dataclasses import dataclass, field

PER_TRANSACTION = 6.0
MIN_LINGER_S = 0.001
MAX_LINGER_S = 0.008
FIRST_TRANSACTION_S = 0.001  # the estimate before any group has committed
WEIGHT = 0.2  # of the newest transaction in the mean
WINDOW_S = 1.0


@dataclass
class GroupTiming:
    """Adaptive by default; `fixed_linger_s` pins the linger and turns early commits off (tests, tuning)."""

    fixed_linger_s: float | None = None
    per_transaction: float = PER_TRANSACTION
    min_s: float = MIN_LINGER_S
    max_s: float = MAX_LINGER_S
    window_s: float = WINDOW_S
    transaction_s: float = FIRST_TRANSACTION_S
    # (when, size) of groups that lingered to the end, sizes decreasing from the left: the largest in the
    # window is the leftmost after the expired ones are dropped (a sliding-window maximum).
    _lingered: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def linger_s(self) -> float:
        if self.fixed_linger_s is not None:
            return self.fixed_linger_s
        return min(max(self.per_transaction * self.transaction_s, self.min_s), self.max_s)

    def full_at(self, now: float) -> int:
        """The group size at which a group commits at once (0: none, linger until the timer)."""
        if self.fixed_linger_s is not None:
            return 0
        while self._lingered and now - self._lingered[0][0] > self.window_s:
            self._lingered.popleft()
        return self._lingered[0][1] if self._lingered else 0

    def committed(self, calls: int, seconds: float, now: float, *, lingered: bool) -> None:
        """A group of `calls` committed on the loop in `seconds` (its statements and commit); `lingered`: it
        waited out its whole linger or filled up (not committed early, nor alone in a lull)."""
        self.transaction_s += WEIGHT * (seconds - self.transaction_s)
        if lingered:
            while self._lingered and self._lingered[-1][1] <= calls:
                self._lingered.pop()
            self._lingered.append((now, calls))


__all__ = ["GroupTiming"]
