"""The retry policy as a table: every status, with tries left or not, stopping or not; and the init()
breaker. Pure functions: no cluster."""

from __future__ import annotations

import pytest

from airflow_parallel_run.core.attempt import AttemptResult, AttemptStage, AttemptStatus
from airflow_parallel_run.core.retry import InitFailures, Step, failed_in_init, next_step, should_retry

FAILURES = [s for s in AttemptStatus if not s.ok and s is not AttemptStatus.CANCELLED]


def _result(status: AttemptStatus, stage: AttemptStage = AttemptStage.RUN, **kw: object) -> AttemptResult:
    return AttemptResult(0, 1, status, stage=stage, error=f"{status} happened", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", list(AttemptStatus), ids=[s.value for s in AttemptStatus])
@pytest.mark.parametrize("attempt", [1, 3])
@pytest.mark.parametrize("stopping", [False, True])
def test_every_status_tries_left_or_not_stopping_or_not(
    status: AttemptStatus, attempt: int, stopping: bool
) -> None:
    result = _result(status)
    step = next_step(result, attempt, 3, stopping=stopping)
    if status.ok:
        expected = Step.COMMIT
    elif status is AttemptStatus.CANCELLED:
        expected = Step.DROP
    elif attempt < 3 and not stopping:
        expected = Step.RETRY
    else:
        expected = Step.FAIL
    assert step is expected
    assert should_retry(result, attempt, 3) is (status in FAILURES and attempt < 3)


@pytest.mark.parametrize("status", FAILURES, ids=[s.value for s in FAILURES])
def test_a_source_that_says_the_data_changed_is_never_retried(status: AttemptStatus) -> None:
    result = _result(status, retriable=False)
    assert not should_retry(result, 1, 3)
    assert next_step(result, 1, 3, stopping=False) is Step.FAIL


def test_run_max_try_1_never_retries() -> None:
    assert next_step(_result(AttemptStatus.RUN_EXCEPTION), 1, 1, stopping=False) is Step.FAIL


def test_what_counts_as_an_init_failure() -> None:
    assert failed_in_init(_result(AttemptStatus.INIT_EXCEPTION, AttemptStage.INIT))
    assert failed_in_init(_result(AttemptStatus.INIT_TIMEOUT, AttemptStage.INIT))
    assert failed_in_init(_result(AttemptStatus.PROCESS_DIED, AttemptStage.INIT))
    assert not failed_in_init(_result(AttemptStatus.CANCELLED, AttemptStage.INIT))  # a stop, not a failure
    assert not failed_in_init(_result(AttemptStatus.PROCESS_DIED, AttemptStage.RUN))
    assert not failed_in_init(_result(AttemptStatus.SYSTEM_ERROR, AttemptStage.START))
    assert not failed_in_init(_result(AttemptStatus.RUN_EXCEPTION))  # even if its message says "init()"


@pytest.mark.parametrize(("slots", "limit"), [(1, 3), (2, 4), (5, 10)])
def test_the_init_breaker_stops_the_job_at_its_limit(slots: int, limit: int) -> None:
    breaker = InitFailures.for_slots(slots)
    assert breaker.limit == limit
    failure = _result(
        AttemptStatus.INIT_EXCEPTION, AttemptStage.INIT, error_file="user/error/n/process001.txt"
    )
    reasons = [breaker.note(failure, any_succeeded=False) for _ in range(limit + 1)]
    assert reasons[: limit - 1] == [None] * (limit - 1)
    assert reasons[limit - 1] == (
        f"init() failed {limit} times and no mini-batch has succeeded, so the job stops instead of retrying: "
        "INIT_EXCEPTION happened (full trace: logs/user/error/n/process001.txt)"
    )
    assert reasons[limit] is not None and f"failed {limit + 1} times" in reasons[limit]


def test_init_failures_after_a_success_are_ordinary_failures() -> None:
    breaker = InitFailures(limit=2)
    failure = _result(AttemptStatus.INIT_TIMEOUT, AttemptStage.INIT)
    assert breaker.note(failure, any_succeeded=False) is None
    for _ in range(5):
        assert breaker.note(failure, any_succeeded=True) is None
    assert breaker.count == 1  # not reset, not counted
    assert breaker.note(failure, any_succeeded=False) is not None
    assert "user/error.txt" in (InitFailures(limit=1).note(failure, any_succeeded=False) or "")
