"""The LoopBatcher's grouping policy with a fake clock: the linger follows the measured transaction within
its bounds, and a group is complete early only at the size of a recent group that lingered to its end."""

import pytest

from jukinet.storage.group_timing import FIRST_TRANSACTION_S, GroupTiming


def test_the_linger_follows_the_transactions_within_its_bounds() -> None:
    timing = GroupTiming(per_transaction=3.0, min_s=0.001, max_s=0.008)
    assert timing.linger_s() == pytest.approx(3.0 * FIRST_TRANSACTION_S)
    for _ in range(40):  # slow transactions: the linger grows to its ceiling, not past it
        timing.committed(4, 0.010, now=1.0, lingered=True)
    assert timing.linger_s() == pytest.approx(0.008)
    for _ in range(40):  # fast ones: it shrinks to its floor
        timing.committed(4, 0.0001, now=1.0, lingered=True)
    assert timing.linger_s() == pytest.approx(0.001)
    for _ in range(60):  # in between: in proportion
        timing.committed(4, 0.002, now=1.0, lingered=True)
    assert timing.linger_s() == pytest.approx(0.006, rel=1e-3)


def test_one_slow_transaction_moves_the_linger_only_part_of_the_way() -> None:
    timing = GroupTiming(per_transaction=3.0, min_s=0.0, max_s=1.0, transaction_s=0.001)
    timing.committed(4, 0.011, now=0.0, lingered=True)
    assert 0.003 < timing.linger_s() < 3 * 0.011


def test_a_group_is_complete_at_the_largest_lingered_size_in_the_window() -> None:
    timing = GroupTiming(window_s=1.0)
    assert timing.full_at(0.0) == 0  # nothing measured: linger in full
    timing.committed(13, 0.002, now=10.0, lingered=True)
    timing.committed(9, 0.002, now=10.3, lingered=True)
    assert timing.full_at(10.5) == 13
    assert timing.full_at(11.2) == 9  # the 13 has left the window, the 9 has not
    assert timing.full_at(11.4) == 0  # a window without a lingered group: the next one measures again


def test_early_groups_do_not_lower_the_size_waited_for() -> None:
    timing = GroupTiming(window_s=1.0)
    timing.committed(13, 0.002, now=10.0, lingered=True)
    for step in range(1, 9):  # groups committed early, some of them small (a lull)
        timing.committed(2 + step % 3, 0.002, now=10.0 + step / 10, lingered=False)
    assert timing.full_at(10.9) == 13


def test_a_fixed_linger_never_completes_a_group_early() -> None:
    timing = GroupTiming(fixed_linger_s=0.05)
    timing.committed(8, 0.5, now=1.0, lingered=True)
    assert timing.linger_s() == 0.05
    assert timing.full_at(1.0) == 0
