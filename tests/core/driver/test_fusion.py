"""Fusing short attempts into chunks: how many per Dask task (`Fusion`), what the chunk task runs and when
it stops early (core/worker/chunk.py), and what the stream books or hands back (`AttemptStream`), on an
in-process cluster with stand-in tasks. The engine with real processes: tests/faults/test_faults_fusion.py."""

from __future__ import annotations

from typing import Any

import pytest
from distributed import Client

from airflow_parallel_run.core.attempt import AttemptResult, AttemptStage, AttemptStatus
from airflow_parallel_run.core.driver import fusion
from airflow_parallel_run.core.driver.attempts import AttemptStream, Pending, Window
from airflow_parallel_run.core.driver.fusion import Fusion
from airflow_parallel_run.core.minibatch import MiniBatch
from airflow_parallel_run.core.worker import chunk


def _result(
    index: int, seconds: float, status: AttemptStatus = AttemptStatus.RUN_DONE, **kw: Any
) -> AttemptResult:
    return AttemptResult(index, 1, status, elapsed_seconds=seconds, **kw)


# -- Fusion: k ------------------------------------------------------------------------------------------
def test_k_is_one_until_a_success_and_follows_the_median_wall_time() -> None:
    f = Fusion(slots=2)
    assert f.size(10_000, any_succeeded=False) == 1  # nothing known: alone
    assert f.size(10_000, any_succeeded=True) == 1  # nothing timed yet
    for i in range(5):
        f.observe(_result(i, 0.01))
    assert f.size(10_000, any_succeeded=False) == 1  # no success yet: a broken init() must not fan out
    assert f.size(10_000, any_succeeded=True) == 20  # 0.2 s / 10 ms
    for i in range(20):
        f.observe(_result(i, 0.0005))
    assert f.size(10_000, any_succeeded=True) == fusion.CHUNK_MAX  # capped
    assert f.size(100, any_succeeded=True) == 25  # the tail: at most left / (2 x slots)
    assert f.size(7, any_succeeded=True) == 1  # the end of the job: one per task


def test_long_mini_batches_are_never_fused_and_k_adapts_when_they_slow_down() -> None:
    f = Fusion(slots=1)
    for i in range(fusion.SAMPLES):
        f.observe(_result(i, 0.002))
    assert f.size(10_000, True) == fusion.CHUNK_MAX
    for i in range(fusion.SAMPLES):  # the recent ones count: the mini-batches got slow
        f.observe(_result(i, 0.3))
    assert f.size(10_000, True) == 1
    g = Fusion(slots=4)
    for i in range(9):
        g.observe(_result(i, 5.0))
    assert g.size(1_000_000, True) == 1


def test_only_attempts_that_reached_a_ready_process_are_timed() -> None:
    f = Fusion(slots=1)
    f.observe(_result(0, 9.0, AttemptStatus.INIT_TIMEOUT, stage=AttemptStage.INIT))
    f.observe(_result(1, 9.0, AttemptStatus.CANCELLED, stage=AttemptStage.RUN))
    f.observe(_result(2, 9.0, AttemptStatus.REUSED, reused=True))
    f.observe(_result(3, 9.0, AttemptStatus.SPECULATIVE_LOST))
    assert f.median() is None
    f.observe(_result(4, 0.05, AttemptStatus.RUN_EXCEPTION, stage=AttemptStage.RUN))
    assert f.median() == 0.05


def test_no_fusion_when_disabled() -> None:
    f = Fusion(slots=1, enabled=False)
    f.observe(_result(0, 0.001))
    assert f.size(10_000, True) == 1


def test_window_counts_tasks_and_the_tail_counts_attempts() -> None:
    window = Window(slots=2)
    full = window.room(0, True, 10_000)
    assert window.room(0, True, 10_000, tasks=0, chunk=8) == 8 * full
    assert window.room(200, True, 10_000, tasks=20, chunk=8) == 8 * (full - 20)
    assert window.room(40, True, 50, tasks=5, chunk=8) == (2 + 50 - 40) // 2  # the tail, in attempts
    batches = [MiniBatch(i, "file", 0, 1) for i in range(4)]
    pending = Pending((mb, 1) for mb in batches)
    pending.put_back([((batches[3], 2), True)])
    assert len(pending) == 5 and pending.take_back(9) == [((batches[3], 2), True)]
    assert len(pending) == 4
    pending.put_back([((batches[3], 2), False)])
    pending.clear()
    assert len(pending) == 0


# -- the chunk task on the worker ------------------------------------------------------------------------
def _fake_worker(monkeypatch: pytest.MonkeyPatch, outcomes: dict[int, AttemptResult]) -> list[int]:
    ran: list[int] = []

    def run_mini_batch(name: str, mb: MiniBatch, attempt: int) -> AttemptResult:
        ran.append(mb.index)
        return outcomes.get(mb.index) or AttemptResult(mb.index, attempt, AttemptStatus.RUN_DONE)

    monkeypatch.setattr(chunk, "run_mini_batch", run_mini_batch)
    return ran


@pytest.mark.parametrize(
    "status,stage",
    [
        (AttemptStatus.INIT_EXCEPTION, AttemptStage.INIT),
        (AttemptStatus.INIT_TIMEOUT, AttemptStage.INIT),
        (AttemptStatus.PROCESS_DIED, AttemptStage.INIT),
        (AttemptStatus.SYSTEM_ERROR, AttemptStage.START),
    ],
)
def test_a_chunk_stops_after_a_start_or_init_failure(monkeypatch: pytest.MonkeyPatch, status, stage) -> None:
    ran = _fake_worker(monkeypatch, {1: AttemptResult(1, 1, status, stage=stage)})
    results = chunk.run_attempts("job", [(MiniBatch(i, "file", 0, 1), 1) for i in range(5)])
    assert ran == [0, 1] and [r.index for r in results] == [0, 1]


def test_a_chunk_goes_on_after_run_failures_and_timeouts_and_through_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    never = AttemptResult(3, 1, AttemptStatus.CANCELLED, stage=AttemptStage.START)
    ran = _fake_worker(
        monkeypatch,
        {
            0: AttemptResult(0, 1, AttemptStatus.RUN_TIMEOUT, stage=AttemptStage.RUN),
            1: AttemptResult(1, 1, AttemptStatus.PROCESS_DIED, stage=AttemptStage.RUN),
            2: AttemptResult(2, 1, AttemptStatus.CANCELLED, stage=AttemptStage.RUN),  # the stop killed it
            3: never,  # and the next ones found the job stopped
            4: AttemptResult(4, 1, AttemptStatus.LOAD_TIMEOUT, stage=AttemptStage.LOAD),
        },
    )
    results = chunk.run_attempts("job", [(MiniBatch(i, "file", 0, 1), 1) for i in range(6)])
    assert ran == [0, 1, 2, 3, 4, 5] and len(results) == 6


def test_a_chunk_starts_nothing_past_its_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = _fake_worker(monkeypatch, {})
    clock = iter([0.0, 0.1, 0.5, chunk.CHUNK_BUDGET_S + 0.1, 99.0])
    monkeypatch.setattr(chunk, "monotonic", lambda: next(clock))
    results = chunk.run_attempts("job", [(MiniBatch(i, "file", 0, 1), 1) for i in range(6)])
    assert ran == [0, 1, 2] and len(results) == 3


# -- the stream: booked, handed back, charged ---------------------------------------------------------------
def _single(spec: str, mb: MiniBatch, attempt: int) -> AttemptResult:
    return AttemptResult(mb.index, attempt, AttemptStatus.RUN_DONE, total=mb.items, succeeded=mb.items)


def _chunk(spec: str, attempts: list[tuple[MiniBatch, int]]) -> list[AttemptResult]:
    """Stand-in chunk task: mini-batch 13 loses the whole task; 5 fails init() (the rest is not run);
    22 ends the chunk as past its budget would."""
    results = []
    for mb, attempt in attempts:
        if mb.index == 13:
            raise RuntimeError("worker lost")
        if mb.index == 5:
            results.append(AttemptResult(5, attempt, AttemptStatus.INIT_EXCEPTION, stage=AttemptStage.INIT))
            break
        results.append(_single(spec, mb, attempt))
        if mb.index == 22:
            break
    return results


def _drain(stream: AttemptStream) -> list[tuple[int, int, AttemptStatus]]:
    booked = []
    while len(stream):
        booked += [(mb.index, a, r.status) for mb, a, r in stream.next_batch(timeout=5)]
    return sorted(booked)


def test_the_stream_books_each_attempt_of_a_chunk_and_hands_back_what_did_not_run(client: Client) -> None:
    stream = AttemptStream(client, "fuse1", _single, "node", None, chunk_task=_chunk)
    batches = [MiniBatch(i, "file", 0, 1) for i in range(28)]
    stream.submit([(mb, 1) for mb in batches], chunk=4)  # [0-3] [4-7] [8-11] [12-15] [16-19] [20-23] [24-27]
    assert len(stream) == 28 and stream.tasks == 7
    booked = _drain(stream)
    returned = stream.take_returned()
    ran = {i for i, _a, _s in booked}
    assert ran == set(range(28)) - {6, 7, 12, 13, 14, 15, 23}
    assert (5, 1, AttemptStatus.INIT_EXCEPTION) in booked
    # after init() failed: alone; a lost chunk: every attempt alone, none charged; past the budget: in chunks
    assert sorted((mb.index, a, alone) for (mb, a), alone in returned) == [
        (6, 1, True), (7, 1, True), (12, 1, True), (13, 1, True), (14, 1, True), (15, 1, True), (23, 1, False)
    ]  # fmt: skip
    assert stream.take_returned() == []


def test_an_attempt_lost_again_alone_fails_its_own_try(client: Client) -> None:
    stream = AttemptStream(client, "fuse2", _single, "node", None, chunk_task=_chunk)
    stream.submit([(MiniBatch(i, "file", 0, 1), 1) for i in (12, 13, 14)], solo=True)
    assert stream.tasks == 3
    booked = _drain(stream)
    assert booked == [
        (12, 1, AttemptStatus.RUN_DONE), (13, 1, AttemptStatus.PROCESS_DIED), (14, 1, AttemptStatus.RUN_DONE)
    ]  # fmt: skip
    assert stream.take_returned() == []


def test_one_attempt_per_task_is_the_task_of_old(client: Client) -> None:
    calls: list[str] = []
    stream = AttemptStream(client, "fuse3", _single, "node", None, chunk_task=_chunk)
    stream.submit([(MiniBatch(i, "file", 0, 1), 1) for i in range(3)], chunk=1)
    assert sorted(stream.in_flight) == [f"apr-fuse3-mb{i}-a1" for i in range(3)]
    assert not any(sent.chunked for sent in stream.in_flight.values()), calls
    assert [i for i, _a, _s in _drain(stream)] == [0, 1, 2]
