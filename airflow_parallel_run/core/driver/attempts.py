"""Attempts in flight on the Dask cluster: what is waiting to run (`Pending`), how many may be in flight
(`Window`), and the stream of submitted attempts and their results (`AttemptStream`).

Each attempt is a Dask task with its own key (``apr-<job>-mb<index>-a<attempt>``, never retried by
Dask: the driver decides), in a Dask task group of its own (`attempt_key`), so that the scheduler sends it
to a worker at once instead of holding it in its root-task queue. Completion notices arrive in a queue as attempts finish; each loop turn
gathers everything that finished since the last one in a single round trip. A worker lost while it ran
an attempt fails that attempt only (PROCESS_DIED).

Short attempts travel in chunks: one Dask task runs several (core/worker/chunk.py; the driver's `Fusion`
chooses how many) and reports the results of those it ran, a prefix. The stream books each as it books a
single attempt, and hands the rest back to the driver (`take_returned`) to submit again, not charged a
try: those after an attempt whose process did not start or whose init() failed (each then alone, so each
meets init() on its own as it would in a task of its own), or past the chunk's time budget. A chunk whose
task fails as a whole (its worker lost more often than the scheduler retries, `KilledWorker`) charges
nobody: every attempt of it goes back, each alone, so an attempt that really kills its worker fails its
own try (PROCESS_DIED) the next time, and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from distributed import Client, Future, as_completed

from ..attempt import AttemptResult, AttemptStage, AttemptStatus
from ..minibatch import MiniBatch
from ..worker.chunk import not_started
from .stopping import STOP_CANCEL_S, STOP_DRAIN_S, bounded
from .watchdog import InFlight

LOOP_WAIT_S = 0.2  # the driver loop looks at the cancel flag at least this often
DRAIN_POLL_S = 0.02  # how often a stopping job looks whether its attempts in flight reported
# Attempts in flight: enough that no worker waits for the driver's next submit, few enough that a
# million mini-batches never sit on the scheduler at once. The window is the only queue: the attempts
# bypass the scheduler's root-task queue (see `attempt_key`).
WINDOW_PER_SLOT = 4
WINDOW_EXTRA = 16

Attempt = tuple[MiniBatch, int]  # a mini-batch and its attempt number (1-based)
Booked = tuple[MiniBatch, int, AttemptResult]
Returned = tuple[Attempt, bool]  # an attempt a chunk did not run, and whether it must go to Dask alone


def attempt_key(job_id: str, index: int, attempt: int) -> tuple[str]:
    """The Dask key of an attempt: its name in a one-element tuple, which Dask makes the task's group.

    A task group of one is never "root-ish" to the scheduler. Attempts named by a plain string all fall
    in one group (``apr``), which the scheduler treats as root tasks once it holds more than twice the
    cluster's threads, and queues: a worker then gets its next attempt only after it reported the last
    one (at most `worker-saturation` x threads, default 1.1, at a time), a scheduler round trip per
    attempt. The driver's `Window` already bounds what is in flight, so each attempt goes to a worker when
    submitted; the task prefix (dashboard) stays ``apr``."""
    return (f"apr-{job_id}-mb{index}-a{attempt}",)


def chunk_key(job_id: str, first: Attempt, number: int) -> tuple[str]:
    """The Dask key of a chunk: named after its first attempt, and the stream's count of chunks so that a
    chunk's key is never used twice (an attempt put back may lead another chunk). A one-element tuple, as
    `attempt_key`, for the same reason."""
    mb, attempt = first
    return (f"apr-{job_id}-mb{mb.index}-a{attempt}-c{number}",)


def attempt_name(key: Any) -> str:
    """An attempt's name from its Dask key (as a future or the scheduler reports it)."""
    return str(key[0]) if isinstance(key, (tuple, list)) else str(key)


class Pending:
    """Attempts waiting to be submitted, first come first served; retries join the end. Attempts a chunk
    did not run (`put_back`) go first: they were dispatched (and counted) already.

    First attempts of a plan kept on disk (core/plan/store.py) wait as runs of mini-batch numbers
    (`extend_numbers`) and are read back (`batch`) only when taken: a job of 100,000 mini-batches listed
    long before they run holds a few ranges, not 100,000 mini-batches."""

    def __init__(
        self, attempts: Iterable[Attempt] = (), batch: Callable[[int], MiniBatch] | None = None
    ) -> None:
        self._queue: deque[Attempt | list[int]] = deque(attempts)  # a list: [first, end) of first attempts
        self._back: deque[Returned] = deque()
        self._batch = batch
        self._count = len(self._queue)

    def take(self, count: int) -> list[Attempt]:
        taken: list[Attempt] = []
        while self._queue and len(taken) < count:
            head = self._queue[0]
            if isinstance(head, list):
                assert self._batch is not None
                taken.append((self._batch(head[0]), 1))
                head[0] += 1
                if head[0] == head[1]:
                    self._queue.popleft()
            else:
                taken.append(head)
                self._queue.popleft()
            self._count -= 1
        return taken

    def extend(self, attempts: Iterable[Attempt]) -> None:
        """First attempts of mini-batches listed while the job runs (core/driver/planning.py)."""
        before = len(self._queue)
        self._queue.extend(attempts)
        self._count += len(self._queue) - before

    def extend_numbers(self, numbers: Iterable[int]) -> None:
        """First attempts of mini-batches kept on disk, by number (read back with `batch` when taken)."""
        for number in numbers:
            tail = self._queue[-1] if self._queue else None
            if isinstance(tail, list) and tail[1] == number:
                tail[1] += 1
            else:
                self._queue.append([number, number + 1])
            self._count += 1

    def retry(self, mb: MiniBatch, attempt: int) -> None:
        self._queue.append((mb, attempt))
        self._count += 1

    def put_back(self, returned: Iterable[Returned]) -> None:
        self._back.extend(returned)

    def take_back(self, count: int) -> list[Returned]:
        """Attempts put back, before any other (not counted again as dispatched: they were)."""
        taken: list[Returned] = []
        while self._back and len(taken) < count:
            taken.append(self._back.popleft())
        return taken

    def clear(self) -> None:
        self._queue.clear()
        self._back.clear()
        self._count = 0

    def __len__(self) -> int:
        return self._count + len(self._back)


class Window:
    """How many attempts may be in flight: 2 per process slot until a mini-batch succeeded (a broken
    init() must not fan out), then `WINDOW_PER_SLOT` per slot plus `WINDOW_EXTRA`. `one_per_slot`
    (speculative execution): one per slot, so that no attempt waits on a worker behind a straggler.

    The tail: attempts beyond the slots wait in some worker's queue, and at the end of a job a worker
    still busy with them holds the job back while other slots idle (up to a whole mini-batch longer).
    So, given what is left to submit (`pending`), a submit leaves at most `slots` + what is still left
    in flight: the workers' queues shrink as the job nears its end and are empty once the last attempt
    is submitted (each of the last ones goes to a worker with a free thread: the scheduler places it on
    the least occupied one), and until then no worker waits for the driver's next submit.

    Chunks (`chunk` attempts per Dask task): the limit counts Dask tasks (`tasks` in flight), so room is
    that many chunks; the tail's rule still counts attempts (a chunk queued on a worker holds the job back
    as long as its attempts would). With chunk=1 and tasks=None, as without chunks."""

    def __init__(self, slots: int, one_per_slot: bool = False) -> None:
        self.slots = slots
        self.one_per_slot = one_per_slot

    def room(
        self,
        in_flight: int,
        any_succeeded: bool,
        pending: int | None = None,
        *,
        tasks: int | None = None,
        chunk: int = 1,
    ) -> int:
        """Attempts to submit now, with `in_flight` attempts in `tasks` Dask tasks and `pending` left."""
        if self.one_per_slot:
            return max(self.slots - in_flight, 0)
        limit = WINDOW_PER_SLOT * self.slots + WINDOW_EXTRA if any_succeeded else 2 * self.slots
        room = (limit - (in_flight if tasks is None else tasks)) * max(chunk, 1)
        if pending is not None:  # in_flight + room <= slots + (pending - room)
            room = min(room, (self.slots + pending - in_flight) // 2, pending)
        return max(room, 0)


class _Sent:
    """One Dask task in flight: its future and its attempts (one, or a chunk's)."""

    __slots__ = ("attempts", "chunked", "future", "solo")

    def __init__(self, future: Future, attempts: tuple[Attempt, ...], chunked: bool, solo: bool) -> None:
        self.future = future
        self.attempts = attempts
        self.chunked = chunked  # run by the chunk task: its result is a list
        self.solo = solo  # an attempt put back to run alone: lost again, it fails its own try


class AttemptStream:
    """The job's attempts on the cluster: submitted with their keys (alone or in chunks), gathered as they
    finish, one booked result per attempt."""

    def __init__(
        self,
        client: Client,
        job_id: str,
        task: Callable[..., AttemptResult],
        spec: Any,
        hosts: list[str] | None,
        chunk_task: Callable[..., Any] | None = None,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.task = task
        self.chunk_task = chunk_task  # runs a chunk of attempts (None: every attempt alone)
        self.spec = spec  # what the task gets before (mini-batch, attempt): the job's worker plugin name
        self.hosts = hosts  # keep the job on the chosen hosts (None: any worker)
        self.in_flight: dict[str, _Sent] = {}  # Dask key name -> the task
        self.submitted: dict[str, float] = {}  # Dask key name -> time.monotonic() of its submit
        self.returned: list[Returned] = []  # attempts chunks did not run, for the driver to submit again
        self._attempts = 0  # attempts in flight (over every task)
        self._chunks = 0
        self._finished = as_completed()

    def submit(
        self,
        attempts: Iterable[Attempt],
        workers: list[str] | None = None,
        *,
        chunk: int = 1,
        solo: bool = False,
    ) -> None:
        """Submits attempts, on the job's hosts or on `workers` (a speculative copy's idle worker): several
        in one `Client.map` (one graph update on the scheduler for them all, not one each), in order.
        `chunk` > 1: that many attempts per task (the chunk task). `solo`: attempts put back after their
        chunk was lost, each in a task of its own run by the chunk task (core/worker/chunk.py), under a key
        of its own."""
        attempts = list(attempts)
        if not attempts:
            return
        options: dict[str, Any] = {
            "pure": False,
            "retries": 0,
            "workers": workers or self.hosts,
            "allow_other_workers": False,
        }
        if self.chunk_task is None or (chunk <= 1 and not solo):
            keys = [attempt_key(self.job_id, mb.index, attempt) for mb, attempt in attempts]
            futures = self.client.map(
                self.task,
                [self.spec] * len(attempts),
                [mb for mb, _ in attempts],
                [attempt for _, attempt in attempts],
                key=keys,
                **options,
            )
            self._sent(keys, [(a,) for a in attempts], futures, chunked=False, solo=False)
            return
        size = 1 if solo else chunk
        groups = [tuple(attempts[i : i + size]) for i in range(0, len(attempts), size)]
        keys = []
        for group in groups:
            self._chunks += 1
            keys.append(chunk_key(self.job_id, group[0], self._chunks))
        futures = self.client.map(self.chunk_task, [self.spec] * len(groups), groups, key=keys, **options)
        self._sent(keys, groups, futures, chunked=True, solo=solo)

    def _sent(
        self,
        keys: list[tuple[str]],
        groups: list[tuple[Attempt, ...]],
        futures: list[Future],
        *,
        chunked: bool,
        solo: bool,
    ) -> None:
        now = time.monotonic()
        for key, group, future in zip(keys, groups, futures, strict=True):
            self.in_flight[key[0]] = _Sent(future, group, chunked, solo)
            self.submitted[key[0]] = now
            self._attempts += len(group)
            self._finished.add(future)

    def _pop(self, name: str) -> _Sent:
        sent = self.in_flight.pop(name)
        self.submitted.pop(name, None)
        self._attempts -= len(sent.attempts)
        return sent

    def forget(self, index: int, attempt: int) -> InFlight | None:
        """An attempt whose result no longer matters (another attempt of its mini-batch committed): it
        leaves the stream, so it is never booked, and its task is cancelled if it has not started. Only
        attempts submitted alone (speculative execution, which never fuses)."""
        name = attempt_key(self.job_id, index, attempt)[0]
        if name not in self.in_flight:
            return None
        submitted = self.submitted.get(name, 0.0)
        sent = self._pop(name)
        bounded(lambda: self.client.cancel([sent.future]), STOP_CANCEL_S)
        return InFlight(sent.attempts[0][0], attempt, submitted)

    def waiting(self) -> list[InFlight]:
        """The attempts submitted and not heard back from, with when each was submitted."""
        return [
            InFlight(mb, attempt, self.submitted.get(name, 0.0))
            for name, sent in self.in_flight.items()
            for mb, attempt in sent.attempts
        ]

    def __len__(self) -> int:
        """Attempts in flight."""
        return self._attempts

    @property
    def tasks(self) -> int:
        """Dask tasks in flight (a chunk is one)."""
        return len(self.in_flight)

    def take_returned(self) -> list[Returned]:
        """Attempts chunks handed back unrun since the last call (see the module)."""
        returned, self.returned = self.returned, []
        return returned

    def check_connected(self) -> None:
        if self.client.status in ("closing", "closed"):  # gave up reconnecting to a lost scheduler
            raise ConnectionError(f"lost the connection to the Dask scheduler ({self.client.status})")

    def next_batch(self, timeout: float = LOOP_WAIT_S) -> list[Booked]:
        """Every attempt that finished by now (waiting up to `timeout` s for the first), with its result,
        in key order: attempts finishing together are booked in a stable order (a chunk's in its order)."""
        done = [f for f in self._next_finished(timeout) if attempt_name(f.key) in self.in_flight]
        outcomes = self._gather(done)  # one round trip for the whole batch
        booked: list[Booked] = []
        for future in done:
            name = attempt_name(future.key)
            booked += self._book(self._pop(name), outcomes.get(name))
        return booked

    def _book(self, sent: _Sent, gathered: Any) -> list[Booked]:
        """A finished task's attempts with their results; a chunk's unrun ones go to `returned`."""
        if not sent.chunked:
            mb, attempt = sent.attempts[0]
            result = gathered if isinstance(gathered, AttemptResult) else collect(sent.future, mb, attempt)
            return [(mb, attempt, result)]
        results = gathered if isinstance(gathered, list) else _chunk_results(sent.future)
        if results is None:  # the task failed as a whole (its worker lost)
            if sent.solo:  # alone already: its own try, as an attempt submitted alone
                mb, attempt = sent.attempts[0]
                return [(mb, attempt, collect(sent.future, mb, attempt))]
            self.returned += [(attempt, True) for attempt in sent.attempts]
            return []
        ran = list(zip(sent.attempts, results, strict=False))
        rest = sent.attempts[len(ran) :]
        if rest:  # alone after a start or init() failure; in chunks again after the time budget
            alone = bool(ran) and not_started(ran[-1][1])
            self.returned += [(attempt, alone) for attempt in rest]
        return [(mb, attempt, result) for (mb, attempt), result in ran]

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

    def _gather(self, futures: list[Future]) -> dict[str, Any]:
        """Results of finished tasks in one call; errored ones are left to `collect`."""
        good = [f for f in futures if f.status == "finished"]
        if not good:
            return {}
        try:
            values = fetch(self.client, lambda: self.client.gather(good), f"{len(good)} attempts")
            return dict(zip([attempt_name(f.key) for f in good], values, strict=True))
        except Exception:  # noqa: BLE001 - fall back to one by one, so one bad result fails only itself
            return {}

    def drain(self) -> list[Booked]:
        """After the stop broadcast: cancels tasks no worker holds yet; returns what the others report
        within STOP_DRAIN_S (CANCELLED for killed attempts, never started for a chunk's later ones; a
        success that finished meanwhile). Attempts a chunk did not run are dropped: the job stops."""
        deadline = time.monotonic() + STOP_DRAIN_S
        known, processing = bounded(self.client.processing, STOP_DRAIN_S / 2)
        # without the scheduler's view, wait for all (bounded)
        held = (
            {attempt_name(k) for keys in processing.values() for k in keys} if known else set(self.in_flight)
        )
        queued = [key for key in self.in_flight if key not in held and not self.in_flight[key].future.done()]
        if queued:
            futures = [self.in_flight[key].future for key in queued]
            bounded(lambda: self.client.cancel(futures), max(deadline - time.monotonic(), 0.1))
            for key in queued:
                self._pop(key)
        # Waits for completion only, then fetches what finished in a bounded helper: never
        # `Future.result(timeout=...)`, whose timeout cancels the client's gather shared by every caller
        # (see `fetch`). What is not back in time is cancelled by `abandon`.
        while time.monotonic() < deadline and not all(sent.future.done() for sent in self.in_flight.values()):
            time.sleep(DRAIN_POLL_S)
        done = [key for key, sent in self.in_flight.items() if sent.future.done()]
        finished = [
            self.in_flight[key].future for key in done if self.in_flight[key].future.status == "finished"
        ]
        fetched, outcomes = bounded(lambda: self._gather(finished), max(deadline - time.monotonic(), 0.05))
        outcomes = outcomes if fetched else {}
        reported: list[Booked] = []
        for key in done:
            sent = self.in_flight[key]
            if key not in outcomes and sent.future.status == "finished":
                continue  # finished, but its result was not fetched in time: as if not back
            reported += self._book(self._pop(key), outcomes.get(key))
        self.returned = []
        return reported

    def abandon(self, before: Callable[[], None]) -> None:
        """Whatever did not report by now is cancelled (bounded: the scheduler may be gone); `before` runs
        first in the same bounded call (the stop Event)."""
        if not self.in_flight:
            return
        futures = [sent.future for sent in self.in_flight.values()]

        def cancel_rest() -> None:
            before()
            self.client.cancel(futures, force=True)

        bounded(cancel_rest, STOP_CANCEL_S)


def _chunk_results(future: Future) -> list[AttemptResult] | None:
    """A finished chunk's results, or None when its task failed (a lost worker)."""
    try:
        results = read_result(future)
    except Exception:  # noqa: BLE001 - the chunk's attempts go back (see the module)
        return None
    return results if isinstance(results, list) else None


def collect(future: Future, mb: MiniBatch, attempt: int) -> AttemptResult:
    """A finished attempt's result; a lost worker fails this attempt only.

    A future the Dask client holds as cancelled is said to be one, not blamed on a lost worker: its task
    may well have ended on the worker (the node log says how)."""
    if future.cancelled():
        return AttemptResult(
            mb.index,
            attempt,
            AttemptStatus.PROCESS_DIED,
            total=mb.items,
            error=(
                f"the result of mini-batch {mb.index} attempt {attempt} was cancelled in the Dask client before "
                "the driver read it (see the node log for how the attempt ended on its worker)"
            ),
            stage=AttemptStage.RUN,
        )
    try:
        result = read_result(future)
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


class ClientGatherCancelled(RuntimeError):
    """The Dask client could not fetch a finished task's result: its shared gather was cancelled."""


def read_result(future: Future) -> Any:
    """`future.result()`, immune to a Dask client whose shared gather was cancelled (`fetch`)."""
    return fetch(future.client, future.result, attempt_name(future.key))


def fetch(client: Client, read: Callable[[], Any], what: str) -> Any:
    """`read()` (a result fetch on `client`), immune to a client whose shared gather was cancelled.

    distributed's client batches concurrent result fetches into one pending gather (`Client._gather_future`).
    When a caller that joined it is cancelled (`Future.result(timeout=...)` timing out while the client's
    five gather slots are busy, or a KeyboardInterrupt in `sync`), the shared gather is cancelled with it,
    and if it had not started it stays the client's pending gather: every later `result()` and `gather()` on
    that client then ends in `UnboundLocalError: cannot access local variable 'result'` (dask/distributed
    #8514), and a job sharing the client would book every attempt as a lost worker while all of them ran
    well. The engine never puts a timeout on a result fetch (`AttemptStream.drain`); a client poisoned by
    someone else is cleared here, and the fetch tried once more."""
    try:
        return read()
    except (UnboundLocalError, asyncio.CancelledError):
        if not clear_cancelled_gather(client):
            raise
    try:
        return read()
    except (UnboundLocalError, asyncio.CancelledError) as exc:
        raise ClientGatherCancelled(
            f"the Dask client could not fetch the result of {what}: its gather was cancelled ({type(exc).__name__})"
        ) from exc


def clear_cancelled_gather(client: Client) -> bool:
    """Forgets the client's pending gather when it is a cancelled one (see `fetch`): True if it was."""

    async def clear() -> bool:
        pending = getattr(client, "_gather_future", None)
        if pending is None or not pending.done():
            return False
        client._gather_future = None
        return True

    try:
        return bool(client.sync(clear))
    except Exception:  # noqa: BLE001 - a client that cannot run it: the caller reports the first error
        return False
