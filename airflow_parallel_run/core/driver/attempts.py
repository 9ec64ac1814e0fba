"""Attempts in flight on the Dask cluster: what is waiting to run (`Pending`), how many may be in flight
(`Window`), and the stream of submitted attempts and their results (`AttemptStream`).

Each attempt is a Dask task with its own key (``apr-<job>-mb<index>-a<attempt>``, never retried by
Dask: the driver decides), in a Dask task group of its own (`attempt_key`), so that the scheduler sends it
to a worker at once instead of holding it in its root-task queue. Completion notices arrive in a queue as attempts finish; each loop turn
gathers everything that finished since the last one in a single round trip. A worker lost while it ran
an attempt fails that attempt only (PROCESS_DIED).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from distributed import Client, Future, as_completed

from ..attempt import AttemptResult, AttemptStage, AttemptStatus
from ..minibatch import MiniBatch
from .stopping import STOP_CANCEL_S, STOP_DRAIN_S, bounded
from .watchdog import InFlight

LOOP_WAIT_S = 0.2  # the driver loop looks at the cancel flag at least this often
# Attempts in flight: enough that no worker waits for the driver's next submit, few enough that a
# million mini-batches never sit on the scheduler at once. The window is the only queue: the attempts
# bypass the scheduler's root-task queue (see `attempt_key`).
WINDOW_PER_SLOT = 4
WINDOW_EXTRA = 16

Attempt = tuple[MiniBatch, int]  # a mini-batch and its attempt number (1-based)
Booked = tuple[MiniBatch, int, AttemptResult]


def attempt_key(job_id: str, index: int, attempt: int) -> tuple[str]:
    """The Dask key of an attempt: its name in a one-element tuple, which Dask makes the task's group.

    A task group of one is never "root-ish" to the scheduler. Attempts named by a plain string all fall
    in one group (``apr``), which the scheduler treats as root tasks once it holds more than twice the
    cluster's threads, and queues: a worker then gets its next attempt only after it reported the last
    one (at most `worker-saturation` x threads, default 1.1, at a time), a scheduler round trip per
    attempt. The driver's `Window` already bounds what is in flight, so each attempt goes to a worker when
    submitted; the task prefix (dashboard) stays ``apr``."""
    return (f"apr-{job_id}-mb{index}-a{attempt}",)


def attempt_name(key: Any) -> str:
    """An attempt's name from its Dask key (as a future or the scheduler reports it)."""
    return str(key[0]) if isinstance(key, (tuple, list)) else str(key)


class Pending:
    """Attempts waiting to be submitted, first come first served; retries join the end."""

    def __init__(self, attempts: Iterable[Attempt] = ()) -> None:
        self._queue: deque[Attempt] = deque(attempts)

    def take(self, count: int) -> list[Attempt]:
        taken: list[Attempt] = []
        while self._queue and len(taken) < count:
            taken.append(self._queue.popleft())
        return taken

    def retry(self, mb: MiniBatch, attempt: int) -> None:
        self._queue.append((mb, attempt))

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


class Window:
    """How many attempts may be in flight: 2 per process slot until a mini-batch succeeded (a broken
    init() must not fan out), then `WINDOW_PER_SLOT` per slot plus `WINDOW_EXTRA`. `one_per_slot`
    (speculative execution): one per slot, so that no attempt waits on a worker behind a straggler.

    The tail: attempts beyond the slots wait in some worker's queue, and at the end of a job a worker
    still busy with them holds the job back while other slots idle (up to a whole mini-batch longer).
    So, given what is left to submit (`pending`), a submit leaves at most `slots` + what is still left
    in flight: the workers' queues shrink as the job nears its end and are empty once the last attempt
    is submitted (each of the last ones goes to a worker with a free thread: the scheduler places it on
    the least occupied one), and until then no worker waits for the driver's next submit."""

    def __init__(self, slots: int, one_per_slot: bool = False) -> None:
        self.slots = slots
        self.one_per_slot = one_per_slot

    def room(self, in_flight: int, any_succeeded: bool, pending: int | None = None) -> int:
        if self.one_per_slot:
            return max(self.slots - in_flight, 0)
        limit = WINDOW_PER_SLOT * self.slots + WINDOW_EXTRA if any_succeeded else 2 * self.slots
        room = limit - in_flight
        if pending is not None:  # in_flight + room <= slots + (pending - room)
            room = min(room, (self.slots + pending - in_flight) // 2, pending)
        return max(room, 0)


class AttemptStream:
    """The job's attempts on the cluster: submitted with their keys, gathered as they finish."""

    def __init__(
        self,
        client: Client,
        job_id: str,
        task: Callable[..., AttemptResult],
        spec: Any,
        hosts: list[str] | None,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.task = task
        self.spec = spec  # what the task gets before (mini-batch, attempt): the job's worker plugin name
        self.hosts = hosts  # keep the job on the chosen hosts (None: any worker)
        self.in_flight: dict[str, tuple[Future, MiniBatch, int]] = {}
        self.submitted: dict[str, float] = {}  # attempt name -> time.monotonic() of its submit
        self._finished = as_completed()

    def submit(self, attempts: Iterable[Attempt], workers: list[str] | None = None) -> None:
        """Submits attempts, on the job's hosts or on `workers` (a speculative copy's idle worker): several
        in one `Client.map` (one graph update on the scheduler for them all, not one each), in order."""
        attempts = list(attempts)
        if not attempts:
            return
        keys = [attempt_key(self.job_id, mb.index, attempt) for mb, attempt in attempts]
        options: dict[str, Any] = {
            "pure": False,
            "retries": 0,
            "workers": workers or self.hosts,
            "allow_other_workers": False,
        }
        futures = self.client.map(
            self.task,
            [self.spec] * len(attempts),
            [mb for mb, _ in attempts],
            [attempt for _, attempt in attempts],
            key=keys,
            **options,
        )
        now = time.monotonic()
        for (mb, attempt), key, future in zip(attempts, keys, futures, strict=True):
            self.in_flight[key[0]] = (future, mb, attempt)
            self.submitted[key[0]] = now
            self._finished.add(future)

    def forget(self, index: int, attempt: int) -> InFlight | None:
        """An attempt whose result no longer matters (another attempt of its mini-batch committed): it
        leaves the stream, so it is never booked, and its task is cancelled if it has not started."""
        name = attempt_key(self.job_id, index, attempt)[0]
        entry = self.in_flight.pop(name, None)
        submitted = self.submitted.pop(name, 0.0)
        if entry is None:
            return None
        future, mb, _ = entry
        bounded(lambda: self.client.cancel([future]), STOP_CANCEL_S)
        return InFlight(mb, attempt, submitted)

    def waiting(self) -> list[InFlight]:
        """The attempts submitted and not heard back from, with when each was submitted."""
        return [
            InFlight(mb, attempt, self.submitted.get(name, 0.0))
            for name, (_future, mb, attempt) in self.in_flight.items()
        ]

    def __len__(self) -> int:
        return len(self.in_flight)

    def check_connected(self) -> None:
        if self.client.status in ("closing", "closed"):  # gave up reconnecting to a lost scheduler
            raise ConnectionError(f"lost the connection to the Dask scheduler ({self.client.status})")

    def next_batch(self, timeout: float = LOOP_WAIT_S) -> list[Booked]:
        """Every attempt that finished by now (waiting up to `timeout` s for the first), with its result,
        in key order: attempts finishing together are booked in a stable order."""
        done = [f for f in self._next_finished(timeout) if attempt_name(f.key) in self.in_flight]
        outcomes = self._gather(done)  # one round trip for the whole batch
        booked = []
        for future in done:
            _, mb, attempt = self.in_flight.pop(attempt_name(future.key))
            self.submitted.pop(attempt_name(future.key), None)
            gathered = outcomes.get(attempt_name(future.key))
            result = gathered if isinstance(gathered, AttemptResult) else collect(future, mb, attempt)
            booked.append((mb, attempt, result))
        return booked

    def _next_finished(self, timeout: float) -> list[Future]:
        # `as_completed.queue` is distributed's own queue of finished futures (tests/core/driver pin it)
        try:
            batch = [self._finished.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(self._finished.queue.get_nowait())
        return sorted(batch, key=lambda future: attempt_name(future.key))

    def _gather(self, futures: list[Future]) -> dict[str, AttemptResult]:
        """Results of finished attempts in one call; errored ones are left to `collect`."""
        good = [f for f in futures if f.status == "finished"]
        if not good:
            return {}
        try:
            return dict(zip([attempt_name(f.key) for f in good], self.client.gather(good), strict=True))
        except Exception:  # noqa: BLE001 - fall back to one by one, so one bad result fails only itself
            return {}

    def drain(self) -> list[Booked]:
        """After the stop broadcast: cancels attempts no worker holds yet; returns what the others report
        within STOP_DRAIN_S (CANCELLED for killed ones; a success that finished meanwhile)."""
        deadline = time.monotonic() + STOP_DRAIN_S
        known, processing = bounded(self.client.processing, STOP_DRAIN_S / 2)
        # without the scheduler's view, wait for all (bounded)
        held = (
            {attempt_name(k) for keys in processing.values() for k in keys} if known else set(self.in_flight)
        )
        queued = [key for key in self.in_flight if key not in held and not self.in_flight[key][0].done()]
        if queued:
            futures = [self.in_flight[key][0] for key in queued]
            bounded(lambda: self.client.cancel(futures), max(deadline - time.monotonic(), 0.1))
            for key in queued:
                self.in_flight.pop(key)
        reported = []
        for key, (future, mb, attempt) in list(self.in_flight.items()):
            try:
                future.result(timeout=max(deadline - time.monotonic(), 0.05))
            except Exception:  # noqa: BLE001 - not back in time, or lost: cancelled below
                continue
            self.in_flight.pop(key)
            reported.append((mb, attempt, collect(future, mb, attempt)))
        return reported

    def abandon(self, before: Callable[[], None]) -> None:
        """Whatever did not report by now is cancelled (bounded: the scheduler may be gone); `before` runs
        first in the same bounded call (the stop Event)."""
        if not self.in_flight:
            return
        futures = [f for f, _, _ in self.in_flight.values()]

        def cancel_rest() -> None:
            before()
            self.client.cancel(futures, force=True)

        bounded(cancel_rest, STOP_CANCEL_S)


def collect(future: Future, mb: MiniBatch, attempt: int) -> AttemptResult:
    """A finished attempt's result; a lost worker fails this attempt only."""
    try:
        result = future.result()
        assert isinstance(result, AttemptResult)
        return result
    except Exception as exc:  # noqa: BLE001 - a lost worker fails this attempt only
        return AttemptResult(
            mb.index,
            attempt,
            AttemptStatus.PROCESS_DIED,
            total=mb.items,
            error=f"the Dask worker running mini-batch {mb.index} was lost: {type(exc).__name__}: {exc}",
            stage=AttemptStage.RUN,
        )
