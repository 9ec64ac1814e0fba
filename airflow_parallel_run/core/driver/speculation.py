"""`Speculation` (``speculative_execution=True``): a straggler at the end of a job gets a second attempt on an
idle process, and the first of the two to commit wins (Spark's and MapReduce's speculative execution).

Once nothing is left to dispatch, an attempt that has run longer than ``speculation_multiplier`` x the
median run() time of the mini-batches finished so far, while a worker has a free thread, gets a copy on
that worker (so in another process: each worker thread has its own). Which attempts run where and for how
long comes from the workers (`activity_on`, as for the watchdog), asked at most every `LOOK_S`.

Exactly-once output: every attempt stages its part and its output_dir under names of its own (mini-batch
and attempt number) and only the driver commits, one attempt per mini-batch: the first success booked.
The other attempt is then forgotten (its result, should it still arrive, is never booked) and its process
is stopped; it gets a `SPECULATIVE_LOST` row, which is neither a failure nor a try. A copy that fails
while the other attempt still runs is logged and waits for it; the mini-batch fails (or is retried)
only when no attempt of it is left running. Copies are not tries: ``run_max_try`` counts the attempts
dispatched from the queue.

While speculation is on, the driver keeps at most one attempt per process in flight: an attempt queued
behind a straggler on its worker could not be helped, and an idle worker thread is then really idle.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..attempt import AttemptResult, AttemptStatus
from ..config import ParallelRunConfig
from .watchdog import InFlight

LOOK_S = 0.5  # once nothing is left to dispatch, stragglers are looked for at most this often


class RunningMedian:
    """The median of a growing list of numbers in O(log n) per number (a job may have millions): the
    lower half in a max-heap, the upper half in a min-heap."""

    def __init__(self) -> None:
        self._low: list[float] = []  # negated
        self._high: list[float] = []

    def add(self, value: float) -> None:
        if self._low and value > -self._low[0]:
            heapq.heappush(self._high, value)
        else:
            heapq.heappush(self._low, -value)
        if len(self._low) > len(self._high) + 1:
            heapq.heappush(self._high, -heapq.heappop(self._low))
        elif len(self._high) > len(self._low):
            heapq.heappush(self._low, -heapq.heappop(self._high))

    def median(self) -> float | None:
        if not self._low:
            return None
        if len(self._low) > len(self._high):
            return -self._low[0]
        return (-self._low[0] + self._high[0]) / 2

    def __len__(self) -> int:
        return len(self._low) + len(self._high)


class Speculation:
    """The speculative-execution bookkeeping of one job (see the module)."""

    def __init__(self, config: ParallelRunConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = config.speculative_execution
        self.multiplier = config.speculation_multiplier
        self.clock = clock
        self.run_seconds = RunningMedian()  # run() times of the mini-batches that succeeded here
        self.copied: dict[int, int] = {}  # mini-batch -> the attempt number of its copy
        self.lost = 0  # attempts that lost the race
        self.lost_attempts: set[tuple[int, int]] = set()  # (mini-batch, attempt): never booked again
        self.where: dict[tuple[int, int], tuple[str, str]] = {}  # (mini-batch, attempt) -> (node, process)
        self._looked = -math.inf

    def line(self) -> str | None:
        """For logs/job_result.txt: what speculative execution did (None: it started no copy)."""
        if not self.copied:
            return None
        return (
            f"Speculative execution: {len(self.copied)} straggling mini-batch(es) got a second attempt; "
            f"{self.lost} attempt(s) lost the race and were stopped (SPECULATIVE_LOST in "
            "logs/sys/job_report/processed_mini-batches.csv; not failures)."
        )

    def finished(self, result: AttemptResult) -> None:
        """A committed attempt: its run() time joins the median (kept only with speculative execution on: it
        holds a number per mini-batch)."""
        if self.enabled and result.status is AttemptStatus.RUN_DONE and not result.reused:
            self.run_seconds.add(result.run_seconds)

    def limit(self) -> float | None:
        """How long an attempt may run before it gets a copy (None: nothing finished yet to compare with)."""
        median = self.run_seconds.median()
        return None if median is None else self.multiplier * median

    def due(self) -> bool:
        """Time to look for stragglers (and ask the workers)."""
        if not self.enabled or self.clock() - self._looked < LOOK_S or self.limit() is None:
            return False
        self._looked = self.clock()
        return True

    def choose(
        self, in_flight: Sequence[InFlight], report: Mapping[str, Any] | None, free: Mapping[str, int]
    ) -> list[tuple[InFlight, str, float]]:
        """The stragglers to copy now, each with the worker to run the copy and how long it has run:
        running attempts (as the workers report them) past `limit`, whose mini-batch has no copy yet and
        runs no other attempt, longest-running first, as many as `free` (worker -> free threads) allows."""
        limit = self.limit()
        if limit is None or not report:
            return []
        running: dict[tuple[int, int], tuple[str, float]] = {}
        for address, worker in report.items():
            if not isinstance(worker, Mapping):
                continue
            for process in worker.get("processes") or []:
                for index, attempt, seconds in process.get("running") or []:
                    running[(int(index), int(attempt))] = (address, float(seconds))
                    self.where[(int(index), int(attempt))] = (
                        str(process.get("node")),
                        str(process.get("process")),
                    )
        per_batch: dict[int, int] = {}
        for item in in_flight:
            per_batch[item.mini_batch.index] = per_batch.get(item.mini_batch.index, 0) + 1
        stragglers = []
        for item in in_flight:
            found = running.get((item.mini_batch.index, item.attempt))
            if found is None or found[1] <= limit:
                continue
            if item.mini_batch.index in self.copied or per_batch[item.mini_batch.index] > 1:
                continue
            stragglers.append((found[1], item))
        slots = dict(free)
        chosen = []
        for seconds, item in sorted(stragglers, key=lambda pair: -pair[0]):
            best = max(sorted(slots.items()), key=lambda pair: pair[1], default=None)
            if best is None or best[1] <= 0:
                break
            address = best[0]
            slots[address] -= 1
            chosen.append((item, address, seconds))
        return chosen


class Flight:
    """The attempt numbers of each mini-batch: the highest given (a retry or a copy takes the next; kept
    only above 1, as a job may have millions of mini-batches) and those in flight (more than one only
    while a speculative copy runs)."""

    def __init__(self) -> None:
        self.highest: dict[int, int] = {}
        self.in_flight: dict[int, set[int]] = {}

    def launched(self, index: int, attempt: int) -> None:
        if attempt > 1:
            self.highest[index] = max(self.highest.get(index, 1), attempt)
        self.in_flight.setdefault(index, set()).add(attempt)

    def landed(self, index: int, attempt: int) -> None:
        attempts = self.in_flight.get(index)
        if attempts is not None:
            attempts.discard(attempt)
            if not attempts:
                del self.in_flight[index]

    def running(self, index: int) -> bool:
        return bool(self.in_flight.get(index))

    def others(self, index: int, attempt: int) -> list[int]:
        """The attempts of `index` in flight other than `attempt`; they leave the flight."""
        attempts = sorted(self.in_flight.pop(index, set()) - {attempt})
        return attempts

    def next_number(self, index: int) -> int:
        return self.highest.get(index, 1) + 1
