"""A consumer group's status on one partition, judged over a window of samples (like Burrow's,
without its two best-known blind spots): pure functions, no I/O.

    OK       no lag now, or zero lag somewhere in the window, or lag that moves and shrinks
    LAGGING  behind, the committed offset moves, but the lag never shrank over the window
    STALLED  behind, a live member, and the committed offset did not move over the window
    STOPPED  behind and nobody there: no live member, or no commit moved the offset for
             longer than the window while the broker cannot tell whether a member is live

Blind spots closed: a stopped group keeps its lag (it is computed from the end offsets and
the last commit, and keeps growing as events arrive) and stays STOPPED instead of vanishing;
a quiet partition with nothing to read is OK, never STOPPED, however old its last commit.

Kafka's OffsetFetch answers without the time of the commit, so "no commit for longer than
the window" is seen as "the committed offset did not change over the window". On a broker
that reports members reliably a live member then means STALLED (there, alive, not moving);
the local broker (Tansu) keeps a killed member in its group for ever (measured), so there
membership says nothing (`members=None`) and the same offset over the window means STOPPED.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OK, LAGGING, STALLED, STOPPED = "OK", "LAGGING", "STALLED", "STOPPED"
SEVERITY = {OK: 0, LAGGING: 1, STALLED: 2, STOPPED: 3}
DEFAULT_WINDOW = 60.0  # seconds


@dataclass(frozen=True)
class Sample:
    """One reading of a partition: when (Unix seconds), the committed offset, the lag."""

    at: float
    committed: int
    lag: int


def judge(history: Sequence[Sample], current: Sample, window: float, members: int | None) -> str:
    """The status of one partition now.

    `history` holds earlier readings (any order, any age); `members` is the number of live
    members of the group, or None when the broker cannot tell (see the module docstring).
    """
    if current.lag <= 0:
        return OK  # nothing to read: a quiet partition is never STOPPED
    start = current.at - window
    earlier = sorted((s for s in history if s.at < current.at), key=lambda s: s.at)
    in_window = [s for s in earlier if s.at >= start] + [current]
    before = [s for s in earlier if s.at < start]
    baseline = before[-1] if before else None  # the last reading before the window opened
    seen = ([baseline] if baseline else []) + in_window
    moved = any(s.committed != current.committed for s in seen)
    if members == 0 and not moved:
        return STOPPED  # lag and nobody to read it (a solo reader outside the group still commits)
    if any(s.lag <= 0 for s in in_window):
        return OK  # caught up somewhere in the window
    if not moved and baseline is not None:  # behind for the whole window, not one step taken
        return STALLED if members else STOPPED
    if not moved or len(seen) < 2:
        return LAGGING  # behind; less than a window seen, so not judged stalled yet
    shrank = any(b.lag < a.lag for a, b in zip(seen, seen[1:], strict=False))
    return OK if shrank else LAGGING


def worst(statuses: Sequence[str]) -> str:
    """The most severe of several statuses (a group's status over its partitions); OK when none."""
    return max(statuses, key=SEVERITY.__getitem__, default=OK)
