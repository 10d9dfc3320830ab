"""The status of a consumer group on a partition, judged over a window of samples."""

from __future__ import annotations

from services.operations.status import LAGGING, OK, STALLED, STOPPED, Sample, judge, worst

WINDOW = 60.0


def readings(*points: tuple[float, int, int]) -> list[Sample]:
    """(seconds ago, committed, lag) → samples before `now` (at 1000.0)."""
    return [Sample(1000.0 - ago, committed, lag) for ago, committed, lag in points]


def now(committed: int, lag: int) -> Sample:
    return Sample(1000.0, committed, lag)


def test_no_lag_now_is_ok() -> None:
    assert judge(readings((70, 10, 5), (30, 12, 3)), now(15, 0), WINDOW, members=1) == OK


def test_zero_lag_anywhere_in_the_window_is_ok() -> None:
    history = readings((80, 10, 4), (40, 14, 0), (20, 14, 3))
    assert judge(history, now(14, 6), WINDOW, members=1) == OK


def test_behind_and_not_moving_over_the_window_with_a_live_member_is_stalled() -> None:
    history = readings((75, 20, 5), (45, 20, 5), (15, 20, 5))
    assert judge(history, now(20, 5), WINDOW, members=1) == STALLED


def test_no_live_member_with_lag_is_stopped_at_once() -> None:
    assert judge([], now(20, 5), WINDOW, members=0) == STOPPED


def test_no_commit_for_longer_than_the_window_where_members_cannot_be_told_is_stopped() -> None:
    # the local broker keeps a killed member for ever: membership is unknown (None)
    history = readings((90, 30, 0), (65, 30, 2), (30, 30, 6))
    assert judge(history, now(30, 9), WINDOW, members=None) == STOPPED


def test_moving_but_lag_never_shrinking_is_lagging() -> None:
    history = readings((70, 100, 10), (40, 110, 12), (20, 120, 12))
    assert judge(history, now(130, 15), WINDOW, members=1) == LAGGING


def test_moving_and_lag_shrinking_is_ok() -> None:
    history = readings((70, 100, 30), (40, 130, 20), (20, 150, 25))
    assert judge(history, now(170, 22), WINDOW, members=1) == OK


def test_a_stopped_group_keeps_its_growing_lag_and_stays_stopped() -> None:
    """Blind spot 1: lag exporters drop a stopped group's lag; here it grows and stays STOPPED."""
    history = readings((120, 50, 0), (90, 50, 3), (60, 50, 8), (30, 50, 14))
    current = now(50, 20)
    assert judge(history, current, WINDOW, members=None) == STOPPED
    assert judge(history, current, WINDOW, members=0) == STOPPED
    assert current.lag > max(s.lag for s in history)  # the lag is still there, and growing


def test_a_quiet_partition_long_without_a_commit_is_ok_never_stopped() -> None:
    """Blind spot 2: nothing to read for longer than the window is OK, members or not."""
    history = readings((600, 42, 0), (300, 42, 0), (90, 42, 0))
    for members in (None, 0, 1):
        assert judge(history, now(42, 0), WINDOW, members=members) == OK


def test_a_solo_reader_outside_the_group_that_commits_is_not_stopped() -> None:
    history = readings((70, 100, 10), (40, 130, 5))
    assert judge(history, now(150, 8), WINDOW, members=0) == OK


def test_less_than_a_window_seen_and_not_moving_is_lagging_not_stalled() -> None:
    assert judge(readings((10, 5, 3)), now(5, 3), WINDOW, members=1) == LAGGING
    assert judge([], now(5, 3), WINDOW, members=None) == LAGGING


def test_the_group_takes_the_worst_partition() -> None:
    assert worst([OK, LAGGING, OK]) == LAGGING
    assert worst([LAGGING, STOPPED, STALLED]) == STOPPED
    assert worst([]) == OK
