"""How a stopped job's logs/job_result.txt counts the processes entry scripts left running: exactly, when every
worker answered the stop's `finish_workers` in time; "on the workers that answered", when some did not (a
loaded machine: the workers go on ending theirs, uncounted). It said "0 ... ended" then, while they ended."""

from __future__ import annotations

import threading
from typing import Any

from airflow_parallel_run.core.driver.finish import result_lines
from airflow_parallel_run.core.driver.stopping import STOP_SHUTDOWN_S, StopControl
from airflow_parallel_run.core.summary import JobSummary

FAILED = JobSummary.from_dict({"status": "failed", "message": "Job failed: interrupted by signal SIGTERM"})


class _Workers:
    """Stands for the Dask client's `run` across workers: answers `answers`, after `delay` s."""

    def __init__(self, answers: dict[str, Any], delay: float = 0.0) -> None:
        self.answers, self.delay = answers, delay
        self.released = threading.Event()

    def run(self, *_args: Any, **_kwargs: Any) -> dict[str, Any]:
        self.released.wait(self.delay)
        return self.answers


def _stop_line(workers: _Workers) -> str:
    stop = StopControl("job", lambda _line: None, lambda _line: None)
    stop.request("interrupted by signal SIGTERM")
    stop.note()
    try:
        stop.finish_workers(workers)  # type: ignore[arg-type]
    finally:
        workers.released.set()
    record = stop.stopped()
    assert record is not None
    (line,) = [line for line in result_lines(FAILED, [], record) if line.startswith("Stopped at")]
    return line


def test_every_worker_answered_the_count_is_exact() -> None:
    line = _stop_line(_Workers({"tcp://a": {"processes": 2, "leftovers": 3}, "tcp://b": {"leftovers": 1}}))
    assert line.endswith(
        ": 0 running attempt(s) cancelled, 4 process(es) the entry script left running ended."
    )


def test_workers_that_did_not_answer_in_time_are_not_counted_as_zero() -> None:
    line = _stop_line(_Workers({"tcp://a": {"leftovers": 3}}, delay=STOP_SHUTDOWN_S + 5))
    assert (
        f"0 process(es) the entry script left running ended on the workers that answered within {STOP_SHUTDOWN_S:g} s;"
        " the others end theirs uncounted" in line
    ), line


def test_a_worker_that_answered_with_an_error_is_not_counted_as_zero() -> None:
    line = _stop_line(_Workers({"tcp://a": {"leftovers": 2}, "tcp://b": RuntimeError("plugin gone")}))
    assert "2 process(es) the entry script left running ended on the workers that answered within" in line, (
        line
    )
