"""The watch lease of an in-cluster job: the job stops itself once nobody has watched it for a while.

A deferred task's job runs inside the Dask cluster with nothing tying it to Airflow except the trigger
that waits for it. The trigger stops the job when a user marks the task failed/success or clears it,
but only if the trigger runs at that moment and Airflow lets it: a task marked before its trigger ever
ran (the triggerer made the trigger's task and cancelled it in one pass, so no hook of ours ran), a
trigger cancelled without our hooks, or a triggerer that died with no other to take over leave a job
that nothing in Airflow will ever stop. The lease closes that gap from the cluster's side:

- the waiter (the trigger) refreshes a watch mark in the scheduler's metadata every few seconds
  (``("airflow-parallel-run", job_id, "watch")``), a value that differs on every refresh;
- the driver reads the mark with its beat and stops the job with `lease_reason` once the mark has not
  changed for the lease. Only the driver's own monotonic clock measures that, so clocks of different
  hosts are never compared. The driver's start counts as the first watch (the task that submitted the
  job watches it until it defers).

The lease must outlast a trigger hand-off (a triggerer restart, another triggerer taking over a dead
one's triggers), so its default is generous (`DEFAULT_WATCH_LEASE_S`).
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from ..errors import ConfigError

#: The lease when the task gives none: a triggerer taking over a dead one's triggers waits for Airflow's
#: health-check threshold (30 s by default), a fresh triggerer's first answer took up to 23 s on 2 shared
#: CPUs, and the trigger's first refresh follows its first poll delay; 300 s leaves a wide margin.
DEFAULT_WATCH_LEASE_S = 300.0
#: Shorter leases would stop healthy jobs before their trigger's first refresh.
MIN_WATCH_LEASE_S = 10.0
#: How often a waiter refreshes the mark (at most; a quarter of a short lease).
WATCH_REFRESH_S = 5.0


def watch_key(job_id: str) -> list[str]:
    """Where the mark lives (under the metadata root of core/remote.py)."""
    return ["airflow-parallel-run", job_id, "watch"]


def lease_reason(lease_s: float) -> str:
    """The words a job stopped by its lease records (after ``Job failed: ``)."""
    return (
        f"no Airflow trigger watched the job for {lease_s:g} s (its task was marked failed/success or "
        "cleared before its trigger ran, or no triggerer is running)"
    )


def check_watch_lease(value: Any) -> float:
    """The lease in seconds, or a `ConfigError` naming `watch_lease_s` and what is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("watch_lease_s", value, f"a finite number of seconds >= {MIN_WATCH_LEASE_S:g}")
    if not math.isfinite(value) or value < MIN_WATCH_LEASE_S:
        raise ConfigError("watch_lease_s", value, f"a finite number of seconds >= {MIN_WATCH_LEASE_S:g}")
    return float(value)


def refresh_interval(lease_s: float | None) -> float:
    """How often a waiter refreshes the mark of a job with this lease."""
    if lease_s is None:
        return WATCH_REFRESH_S
    return max(0.5, min(WATCH_REFRESH_S, lease_s / 4))


def new_mark() -> str:
    """A watch mark no earlier refresh (of this or another waiter) has written."""
    return uuid.uuid4().hex


class WatchLease:
    """The driver's side: when the mark last changed, on this host's monotonic clock."""

    def __init__(self, lease_s: float, now: float | None = None) -> None:
        self.lease_s = float(lease_s)
        self._mark: Any = None
        self._changed = time.monotonic() if now is None else now

    def observe(self, mark: Any, now: float | None = None) -> bool:
        """Notes the mark read now; True once it has not changed for the whole lease."""
        now = time.monotonic() if now is None else now
        if mark is not None and mark != self._mark:
            self._mark, self._changed = mark, now
        return now - self._changed >= self.lease_s
