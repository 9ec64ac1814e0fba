"""Stopping a job (cancel, on_kill, a signal, a threshold, a lost lock) and ending its workers' processes.

The stop reaches every worker's `JobWorker` in one broadcast (`stop_on`, bounded by STOP_BROADCAST_S) and
kills the running entry-script processes; their attempts report CANCELLED within process.POLL_S, and the
driver books what arrives within STOP_DRAIN_S. Then it ends the workers' processes (`finish_on`,
STOP_SHUTDOWN_S), writes job_result.txt, removes .staging and releases the lock, and only then writes
report.html and removes the job's plugin (`unregister`, STOP_SHUTDOWN_S; a plugin left by a driver killed
meanwhile is swept at the next job's start). Airflow 3 sends SIGTERM to a task and SIGKILL 5 s later, so
the worst case, LOOP_WAIT_S + STOP_BROADCAST_S + STOP_DRAIN_S + STOP_CANCEL_S + STOP_SHUTDOWN_S = 4.2 s
plus writing the result (an unresponsive scheduler or workers: every bound reached), stays inside that
window. Measured with bench/stop_bench.py (embedded cluster, 2 processes in slow run()s or init()s, up to
24 attempts in flight, a shared 2-core machine at load 3-14): 0.1-0.7 s from the cancel or SIGTERM to a
complete job_result.txt.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distributed import Client, Event

from ..worker.plugin import finish_on, plugin_name, register, stop_on, sweep_orphans, unregister
from ..worker.process import SHUTDOWN_GRACE_S
from ..worker.spec import JobSpec

STOP_BROADCAST_S = 1.0
STOP_DRAIN_S = 1.0
STOP_CANCEL_S = 0.5  # cancelling what did not report (and, after the result, clearing the stop Event)
STOP_SHUTDOWN_S = 1.5
GIVE_UP_POLL_S = 0.05  # a bounded call with `give_up` looks at it this often
# At a normal end the entry scripts' shutdown() runs (SHUTDOWN_GRACE_S) and remote logs are uploaded.
SHUTDOWN_BOUND_S = SHUTDOWN_GRACE_S + 300.0


def stamp(seconds: float) -> str:
    """UTC with milliseconds, as in the node logs, so stop and process times can be compared."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def bounded(
    call: Callable[[], Any], seconds: float, give_up: Callable[[], bool] | None = None
) -> tuple[bool, Any]:
    """Runs `call()` in a helper thread for at most `seconds`: (True, its result), (False, the exception
    it raised), or (False, None) when it is still running (it goes on in the background). With
    `give_up`, stops waiting as soon as that says so (a job being stopped must not wait on a question)."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, call()))
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            box.append((False, exc))

    thread = threading.Thread(target=run, name="apr-bounded-call", daemon=True)
    thread.start()
    if give_up is None:
        thread.join(seconds)
    else:
        deadline = time.monotonic() + seconds
        while thread.is_alive() and time.monotonic() < deadline and not give_up():
            thread.join(min(GIVE_UP_POLL_S, max(deadline - time.monotonic(), 0.0)))
    return box[0] if box else (False, None)


class StopControl:
    """Whether and why the job stops. `cancel` is thread-safe and signal-safe (it only sets flags); the
    driver loop looks at `requested` at least every LOOP_WAIT_S."""

    def __init__(self, job_id: str, master: Callable[[str], None], say: Callable[[str], None]) -> None:
        self.job_id = job_id
        self.master = master
        self.say = say
        self.reason: str | None = None
        self.stopped_at: float | None = None
        self.cancelled_attempts = 0
        self.leftover_processes = 0
        # None: every worker answered `finish_workers` in time, so `leftover_processes` is their count;
        # else how long the answers were waited for (the others go on ending theirs, uncounted)
        self.leftovers_unanswered_s: float | None = None
        self._cancel = threading.Event()
        self.event: Event | None = None
        self.plugin: str | None = None  # the job's worker plugin, once registered

    def cancel(self, reason: str = "the job was cancelled") -> None:
        self.reason = self.reason or reason
        self._cancel.set()

    def request(self, reason: str | None) -> None:
        """Stops the job for `reason` (the first reason stands; None changes nothing)."""
        self.reason = self.reason or reason

    @property
    def requested(self) -> bool:
        return bool(self.reason) or self._cancel.is_set()

    def note(self) -> None:
        """The moment the job stops, in the master log and as a progress line."""
        self.stopped_at = time.time()
        self.master(f"stopping at {stamp(self.stopped_at)} UTC: {self.reason}")
        self.say(f"Stopping: {self.reason}")

    # -- the workers ---------------------------------------------------------------------------------
    def attach(self, client: Client, spec: JobSpec, hosts: tuple[str, ...] | None) -> str:
        """The job on the cluster: its worker plugin (on every worker, now and later; plugins that drivers
        which died left behind are swept first) and its Dask Event, which workers that missed the stop
        broadcast ask before they start anything. Returns the plugin's name."""
        with contextlib.suppress(Exception):  # a sweep that fails leaves orphans for the next job's
            client.run_on_scheduler(sweep_orphans)
        self.event = Event(f"apr-stop-{self.job_id}", client=client)
        # Named before the scheduler holds it: a registration that fails half-way is still removed.
        self.plugin = plugin_name(self.job_id, str(client.id))
        try:
            register(client, spec, hosts, self.plugin)
        except BaseException:
            self.detach(client)
            raise
        return self.plugin

    def detach(self, client: Client) -> None:
        """After the job: its plugin goes from the scheduler and every worker, and the Event is cleared
        (bounded: the scheduler may already be gone)."""
        if self.plugin is not None:
            name, self.plugin = self.plugin, None
            bounded(lambda: unregister(client, name), STOP_SHUTDOWN_S)
        self.clear_event()

    def broadcast(self, client: Client) -> None:
        """No new attempt or process of the job from now on, on any worker; running ones are killed."""

        def reach() -> Any:
            with contextlib.suppress(Exception):  # workers that missed the broadcast ask this Event
                if self.event is not None:
                    self.event.set()
            return client.run(stop_on, self.plugin, on_error="return")

        reached, _ = bounded(reach, STOP_BROADCAST_S)
        if reached:
            self.master(
                f"stopped on every worker at {stamp(time.time())} UTC: no entry-script process or "
                "mini-batch of this job starts after this"
            )
        else:
            self.master(f"the stop did not reach every worker within {STOP_BROADCAST_S:g} s")

    def set_event(self) -> None:
        if self.event is not None:
            self.event.set()

    def clear_event(self) -> None:
        """After the job: the Event goes (bounded: the scheduler may already be gone)."""
        if self.event is not None:
            bounded(self.event.clear, STOP_CANCEL_S)

    def finish_workers(self, client: Client) -> None:
        """Ends the job's entry-script processes on every worker (shutdown() runs when the job ended
        normally) and what they left running; the count goes to the master log."""
        bound = STOP_SHUTDOWN_S if self.stopped_at is not None else SHUTDOWN_BOUND_S
        done, outcome = bounded(
            lambda: client.run(finish_on, self.plugin, True, on_error="return"),
            bound,
        )
        if not done:
            self.leftovers_unanswered_s = bound
            self.master(
                "could not stop entry-script processes on every worker: "
                + (f"{outcome}" if outcome is not None else f"no answer within {bound:g} s")
                + " (an orphaned entry-script process ends itself and what it started within a second)"
            )
            return
        failed = []
        for worker, result in dict(outcome).items():
            if isinstance(result, dict):
                self.leftover_processes += int(result.get("leftovers", 0))
            else:
                failed.append(f"{worker}: {result}")
        if failed:
            self.leftovers_unanswered_s = bound
            self.master(f"could not stop entry-script processes on every worker: {'; '.join(failed)}")
        if self.leftover_processes:
            self.master(
                f"ended {self.leftover_processes} process(es) that entry scripts started and left running "
                "(pids in logs/sys/node/<ip>/<process>.txt)"
            )

    def stopped(self) -> StopRecord | None:
        """For job_result.txt: when, why and what the stop ended, if the job stopped."""
        if self.stopped_at is None:
            return None
        return StopRecord(
            self.stopped_at,
            self.reason or "",
            self.cancelled_attempts,
            self.leftover_processes,
            self.leftovers_unanswered_s,
        )


@dataclass(frozen=True)
class StopRecord:
    """How a stopped job stopped, for logs/job_result.txt. `leftovers` counts the processes entry scripts
    left running that the workers ended; `unanswered_s` (None when every worker answered) says that some
    worker did not answer within that many seconds, so the count is of those that did: the others end
    theirs all the same, uncounted (a loaded machine, a lost worker)."""

    at: float
    reason: str
    cancelled: int
    leftovers: int
    unanswered_s: float | None = None
