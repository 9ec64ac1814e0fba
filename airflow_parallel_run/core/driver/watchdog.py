"""`Watchdog`: a job never hangs silently. Two limits, Azure's names (/work/shared/reference/
azure-parallel-run-step.md, the PRS driver arguments):

- `first_task_creation_timeout`: from the start of the job's attempts until some entry-script process is
  ready (its init() returned). A job whose processes never get there (an init() that never returns under a
  huge run_invocation_timeout, a worker that never runs the job's tasks) fails naming each worker, its
  processes and the last lines of their stderr and entry-script logs.
- `progress_update_timeout`: once a process was ready, no attempt of any mini-batch ended (succeeded,
  failed or retried) for that long. The job fails naming the mini-batches in flight, the process and host
  running each and how long each has run.

The driver knows its attempts only when they report, so what the workers' processes do comes from
`activity_on` (core/worker/plugin.py), one bounded `client.run` round trip: every `PROBE_S` until a process
is known to be ready (an attempt that got past init() tells it too), and once when a limit is reached.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..attempt import AttemptResult, AttemptStage
from ..config import ParallelRunConfig
from ..minibatch import MiniBatch

PROBE_S = 2.0  # until a process is known to be ready, the workers are asked this often
LISTED = 10  # mini-batches or processes named in a message; the rest are counted
TAIL_LINES = 5  # lines of each process's stderr and entry-script log in the message

#: tails -> {worker address: its `JobWorker.activity`, or None where the job has no plugin}; None when
#: the workers did not answer in time.
Probe = Callable[[bool], Mapping[str, Any] | None]


@dataclass(frozen=True)
class InFlight:
    """One attempt the driver submitted and has not heard back from."""

    mini_batch: MiniBatch
    attempt: int
    submitted: float  # time.monotonic()


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


class Watchdog:
    """Watches one job's attempts; `check` returns the reason to stop the job, or None."""

    def __init__(
        self, config: ParallelRunConfig, probe: Probe, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.progress_limit = config.progress_update_limit
        self.first_task_limit = config.first_task_creation_limit
        self.probe = probe
        self.clock = clock
        self.started = clock()
        self.ready_at: float | None = None  # when a process was first ready (as far as the driver knows)
        self.last_ended = self.started  # when an attempt last ended
        self._probed = -math.inf

    def attempt_ended(self, result: AttemptResult) -> None:
        """An attempt reported (any outcome): progress. One that got past init() proves a ready process."""
        self.last_ended = self.clock()
        if self.ready_at is None and (result.ok or result.stage in (AttemptStage.LOAD, AttemptStage.RUN)):
            self.ready_at = self.last_ended

    def idle(self) -> None:
        """Nothing is in flight (the listing has brought nothing to run yet): no attempt can end, so the
        wait does not count against `progress_update_timeout`."""
        self.last_ended = self.clock()

    def check(self, in_flight: Callable[[], Sequence[InFlight]]) -> str | None:
        """The reason to stop the job now, or None. Cheap unless a probe is due (see the module);
        `in_flight` is asked only when the job fails for lack of progress."""
        now = self.clock()
        if self.ready_at is None:
            due = now - self.started >= self.first_task_limit
            if not due and now - self._probed < PROBE_S:
                return None
            self._probed = now
            report = self.probe(due)
            ready = [
                float(w["ready_s_ago"])
                for w in (report or {}).values()
                if isinstance(w, Mapping) and w.get("ready_s_ago") is not None
            ]
            if ready:
                self.ready_at = max(now - max(ready), self.started)
            elif due:
                return self._not_ready(now - self.started, report)
            else:
                return None
        since = max(self.last_ended, self.ready_at)
        if now - since < self.progress_limit:
            return None
        return self._no_progress(now - since, in_flight(), self.probe(False))

    # -- the messages --------------------------------------------------------------------------------
    def _not_ready(self, waited: float, report: Mapping[str, Any] | None) -> str:
        head = (
            f"no entry-script process became ready within {self.first_task_limit:g} s "
            f"(first_task_creation_timeout): after {_seconds(waited)} "
        )
        advice = (
            "An init() that takes this long needs a higher first_task_creation_timeout; one that hangs "
            "needs fixing (run_invocation_timeout also bounds init())."
        )
        if report is None:
            return head + "the workers did not answer when asked what their processes do. " + advice
        workers = {address: w for address, w in report.items() if isinstance(w, Mapping)}
        if not workers:
            return head + "no worker holds the job (its worker plugin is on none of them). " + advice
        named: list[str] = []
        tails: list[str] = []
        for address, worker in sorted(workers.items()):
            processes = list(worker.get("processes") or [])
            if not processes:
                named.append(f"worker {address} on {worker.get('node')} started no entry-script process")
            for process in processes[:LISTED]:
                who = f"{process['process']} on {process['node']}"
                named.append(
                    f"{who} (pid {process['pid']}, worker {address}) has not finished init() after "
                    f"{_seconds(float(process['for_s']))}"
                )
                for kind, what in (("stderr", "stderr"), ("entry_log", "entry-script log")):
                    tail = "\n".join(str(process.get(f"{kind}_tail") or "").splitlines()[-TAIL_LINES:])
                    where = f"logs/{process.get(kind)}"
                    tails.append(
                        f"last lines of the {what} of {who} ({where}):\n{_indent(tail)}"
                        if tail
                        else f"the {what} of {who} ({where}) is empty"
                    )
            if len(processes) > LISTED:
                named.append(f"{len(processes) - LISTED} more processes on worker {address}")
        return head + "; ".join(named) + ". " + advice + "".join(f"\n{t}" for t in tails)

    def _no_progress(
        self, quiet: float, in_flight: Sequence[InFlight], report: Mapping[str, Any] | None
    ) -> str:
        where: dict[tuple[int, int], tuple[str, str, Any, float]] = {}
        for worker in (report or {}).values():
            if not isinstance(worker, Mapping):
                continue
            for process in worker.get("processes") or []:
                for index, attempt, running_s in process.get("running") or []:
                    where[(int(index), int(attempt))] = (
                        str(process["process"]),
                        str(process["node"]),
                        process.get("pid"),
                        float(running_s),
                    )
        running, waiting = [], 0
        for item in sorted(in_flight, key=lambda f: (f.submitted, f.mini_batch.index)):
            found = where.get((item.mini_batch.index, item.attempt))
            if found is None:
                waiting += 1
                continue
            process, node, pid, running_s = found
            running.append(
                f"mini-batch {item.mini_batch.index} ({item.mini_batch.label()}, attempt {item.attempt}) "
                f"has run for {_seconds(running_s)} in {process} on {node} (pid {pid})"
            )
        parts = running[:LISTED]
        if len(running) > LISTED:
            parts.append(f"{len(running) - LISTED} more mini-batches running")
        if waiting:
            parts.append(f"{waiting} submitted mini-batch(es) not running in any process")
        if report is None:
            parts.append("the workers did not answer when asked what their processes do")
        detail = "; ".join(parts) if parts else "no mini-batch is in flight"
        return (
            f"no mini-batch finished or failed for {_seconds(quiet)} (progress_update_timeout "
            f"{self.progress_limit:g} s): {detail}. A run() that can hang needs a lower "
            "run_invocation_timeout; mini-batches this slow need a higher progress_update_timeout"
        )
