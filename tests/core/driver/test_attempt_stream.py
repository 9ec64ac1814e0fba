"""The driver's attempts in flight, on an in-process cluster: what waits (`Pending`), how many may be in
flight (`Window`), and `AttemptStream`'s batches: one gather per batch, key order, a lost attempt as
PROCESS_DIED. Also pins the distributed internal the stream reads (`as_completed().queue`)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from typing import Any

from distributed import Client, as_completed

from airflow_parallel_run.core.attempt import AttemptResult, AttemptStatus
from airflow_parallel_run.core.driver.attempts import (
    WINDOW_EXTRA,
    WINDOW_PER_SLOT,
    AttemptStream,
    Pending,
    Window,
    clear_cancelled_gather,
    collect,
)
from airflow_parallel_run.core.minibatch import MiniBatch


def _attempt(spec: str, mb: MiniBatch, attempt: int) -> AttemptResult:
    if mb.index == 3:
        raise RuntimeError("worker lost")
    return AttemptResult(
        mb.index, attempt, AttemptStatus.RUN_DONE, total=mb.items, succeeded=mb.items, node=spec
    )


def test_the_distributed_queue_the_stream_reads_exists(client: Client) -> None:
    assert isinstance(as_completed().queue, queue.Queue)


def test_pending_and_window() -> None:
    batches = [MiniBatch(i, "file", 0, 1) for i in range(5)]
    pending = Pending((mb, 1) for mb in batches)
    assert [mb.index for mb, _ in pending.take(2)] == [0, 1]
    pending.retry(batches[0], 2)
    assert [(mb.index, a) for mb, a in pending.take(10)] == [(2, 1), (3, 1), (4, 1), (0, 2)]
    assert len(pending) == 0
    window = Window(slots=3)
    assert window.room(0, any_succeeded=False) == 6 and window.room(5, any_succeeded=False) == 1
    assert window.room(0, any_succeeded=True) == WINDOW_PER_SLOT * 3 + WINDOW_EXTRA
    assert window.room(100, any_succeeded=True) == 0
    full = WINDOW_PER_SLOT * 3 + WINDOW_EXTRA
    assert window.room(2, any_succeeded=True, pending=100) == full - 2  # far from the end: a window ahead
    # the tail: in flight after the submit <= slots + what is still left
    assert window.room(0, any_succeeded=True, pending=5) == 4  # 4 in flight <= 3 + 1
    assert window.room(2, any_succeeded=True, pending=1) == 1  # the last one, to a free slot
    assert window.room(3, any_succeeded=True, pending=1) == 0  # no free slot: it waits for one
    assert window.room(7, any_succeeded=True, pending=2) == 0 and window.room(0, True, pending=0) == 0
    assert window.room(0, any_succeeded=False, pending=1) == 1


def test_batches_come_back_in_key_order_with_a_lost_attempt_failed(client: Client) -> None:
    stream = AttemptStream(client, "job1", _attempt, "node-a", None)
    batches = [MiniBatch(i, "file", 0, 2) for i in range(6)]
    stream.submit((mb, 1) for mb in batches)
    assert len(stream) == 6
    booked = []
    while len(stream):
        batch = stream.next_batch(timeout=5)
        assert [str(mb.index) for mb, _, _ in batch] == sorted(str(mb.index) for mb, _, _ in batch)
        booked += batch
    results = {mb.index: result for mb, _, result in booked}
    assert sorted(results) == list(range(6))
    assert results[3].status is AttemptStatus.PROCESS_DIED and "was lost: RuntimeError" in results[3].error
    assert all(results[i].ok and results[i].node == "node-a" for i in (0, 1, 2, 4, 5))


def test_a_result_cancelled_in_the_client_is_said_to_be_one(client: Client) -> None:
    """A future the client holds as cancelled is not blamed on a lost worker (`Future.result()` raises
    FutureCancelledError for it, which was reported as "the Dask worker running mini-batch 7 was lost")."""
    mb = MiniBatch(7, "file", 0, 2)
    future = client.submit(_attempt, "node-a", mb, 1, key=("apr-test-cancelled-mb7-a1",), pure=False)
    future.result(timeout=30)
    client.cancel([future])
    deadline = time.monotonic() + 30
    while future.status != "cancelled":
        assert time.monotonic() < deadline, future.status
        time.sleep(0.05)
    result = collect(future, mb, 1)
    assert result.status is AttemptStatus.PROCESS_DIED and not result.ok
    assert result.error.startswith("the result of mini-batch 7 attempt 1 was cancelled in the Dask client"), (
        result
    )
    assert "was lost" not in result.error


class _GatherSlots:
    """Holds the client's five gather slots (distributed's `Client._gather_semaphore`), as five large
    result fetches in flight would: a fetch started meanwhile waits for a slot before it starts."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __enter__(self) -> _GatherSlots:
        async def hold() -> None:
            for _ in range(5):
                await self.client._gather_semaphore.acquire()

        self.client.sync(hold)
        return self

    def __exit__(self, *exc: object) -> None:
        async def release() -> None:
            for _ in range(5):
                self.client._gather_semaphore.release()

        self.client.sync(release)


async def _fetch_timing_out(client: Client, future: Any) -> None:
    """What `future.result(timeout=...)` does to the client when its time runs out while the fetch waits for a
    gather slot: the fetch is cancelled. Cancelled here once the fetch is queued, not after a fixed 0.3 s: on
    a loaded machine the client's loop had not queued it by then, the timeout came first and left the client
    clean (the fresh-clone CI of 7297e04 failed this test's first assertion so)."""
    fetch = asyncio.ensure_future(client._gather([future]))
    deadline = time.monotonic() + 30
    while client._gather_future is None:  # queued behind the held slots
        assert not fetch.done() and time.monotonic() < deadline, "the fetch never waited for a gather slot"
        await asyncio.sleep(0.01)
    fetch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fetch


def _poisoned(client: Client) -> bool:
    pending = client._gather_future
    return pending is not None and pending.cancelled()


def test_a_client_whose_gather_was_cancelled_still_books_every_attempt(client: Client) -> None:
    """A `result(timeout=...)` that times out while the gather slots are busy leaves the client a cancelled
    pending gather (dask/distributed#8514): every later fetch raised UnboundLocalError, and a job on that
    client booked every attempt as a lost worker while all ran well (38 tests of one pytest worker)."""
    finished = client.submit(lambda: 1, key="apr-test-poison", pure=False)
    assert finished.result(timeout=30) == 1
    with _GatherSlots(client):
        client.sync(
            _fetch_timing_out, client, finished
        )  # someone else's fetch with a timeout, on the shared client
    try:
        assert _poisoned(client), "distributed no longer leaves a cancelled gather behind: drop the cure"
        stream = AttemptStream(client, "job-poisoned", _attempt, "node-a", None)
        stream.submit((MiniBatch(i, "file", 0, 2), 1) for i in (0, 1, 2, 4))
        booked = []
        while len(stream):
            booked += stream.next_batch(timeout=5)
        assert sorted(mb.index for mb, _, _ in booked) == [0, 1, 2, 4]
        assert all(result.ok for _, _, result in booked), [r.error for _, _, r in booked]
        assert not _poisoned(client)
    finally:
        clear_cancelled_gather(client)


def test_a_stopping_stream_never_cancels_the_clients_gather(client: Client) -> None:
    """`drain` after a stop reads what reported within its budget without a timeout on any fetch: it used
    `Future.result(timeout=...)`, which poisoned the client shared by later jobs when the slots were busy."""
    stream = AttemptStream(client, "job-drain", _attempt, "node-a", None)
    stream.submit((MiniBatch(i, "file", 0, 2), 1) for i in (0, 1, 2))
    deadline = time.monotonic() + 30
    while not all(sent.future.done() for sent in stream.in_flight.values()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        with _GatherSlots(client):
            started = time.monotonic()
            reported = stream.drain()  # the results cannot be fetched while the slots are held
            assert time.monotonic() - started < 5
            assert reported == []
        later = client.submit(lambda: 2, key="apr-test-after-drain", pure=False)
        assert later.result(timeout=30) == 2
        assert not _poisoned(client)
    finally:
        clear_cancelled_gather(client)


def _name(key: object) -> str:
    return str(key[0]) if isinstance(key, (tuple, list)) else str(key)


_RELEASE = threading.Event()  # the in-process cluster's worker threads wait on it


def _held(spec: str, mb: MiniBatch, attempt: int) -> AttemptResult:
    _RELEASE.wait(30)
    return AttemptResult(mb.index, attempt, AttemptStatus.RUN_DONE, total=mb.items, succeeded=mb.items)


def test_every_attempt_in_the_window_goes_to_a_worker_at_once(client: Client) -> None:
    """The window is the only queue: attempts are never held in the scheduler's root-task queue, where
    a worker would get its next attempt only after reporting the last one (a round trip per attempt)."""
    _RELEASE.clear()
    stream = AttemptStream(client, "job2", _held, "node-a", None)
    count = 6 * sum(client.nthreads().values())  # well past what the scheduler treats as root tasks
    stream.submit((MiniBatch(i, "file", 0, 1), 1) for i in range(count))
    try:
        deadline = time.monotonic() + 10
        while True:
            queued = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.queued))
            held = {_name(k) for keys in client.processing().values() for k in keys}
            if held == set(stream.in_flight) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert queued == 0
        assert held == set(stream.in_flight) and len(held) == count
    finally:
        _RELEASE.set()
    booked = []
    while len(stream):
        booked += stream.next_batch(timeout=5)
    assert sorted(mb.index for mb, _, _ in booked) == list(range(count))
    assert all(result.ok for _, _, result in booked)
