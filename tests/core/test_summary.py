"""The job's accounting, without a cluster: the tally, each threshold, the verdict's order, the summary's
keys and their order, and notes added after the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import ParallelRunConfig
from airflow_parallel_run.core.attempt import AttemptResult, AttemptStatus
from airflow_parallel_run.core.minibatch import FileRef, MiniBatch
from airflow_parallel_run.core.summary import (
    SUMMARY_KEYS,
    JobSummary,
    Tally,
    summarise,
    threshold_breach,
    verdict,
)


@pytest.fixture
def config(tmp_path: Path) -> Any:
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    return lambda **kw: ParallelRunConfig(entry_script=str(script), **kw)


def _mb(index: int, items: int = 2) -> MiniBatch:
    return MiniBatch(index, "file", 0, items, files=tuple(FileRef(f"/in/{index}-{i}") for i in range(items)))


def _ok(index: int, total: int = 2, succeeded: int = 2, reused: bool = False) -> AttemptResult:
    status = AttemptStatus.REUSED if reused else AttemptStatus.RUN_DONE
    return AttemptResult(index, 1, status, total=total, succeeded=succeeded, reused=reused)


def _failed(index: int, total: int = 2) -> AttemptResult:
    return AttemptResult(index, 3, AttemptStatus.RUN_EXCEPTION, total=total)


def _summary(tally: Tally, message: str | None) -> JobSummary:
    return summarise(
        tally,
        message=message,
        output="/out",
        append_row_file=None if message else "/out/x.txt",
        logs_dir="/out/logs",
        cache_key="k",
        duration_s=1.23456,
    )


def test_the_tally_counts_items_and_mini_batches() -> None:
    tally = Tally(total_mini_batches=4, total_items=8)
    tally.record(_mb(0), _ok(0))
    tally.record(_mb(1), _ok(1, succeeded=1))  # one item of it failed
    tally.record(_mb(2), _ok(2, reused=True))
    tally.record(_mb(3), _failed(3, total=3))  # the reader found 3 items where the planner saw 2
    assert (
        tally.done,
        tally.succeeded_mini_batches,
        tally.failed_mini_batches,
        tally.reused_mini_batches,
    ) == (
        4,
        3,
        1,
        1,
    )
    assert (tally.total_items, tally.succeeded_items, tally.failed_items) == (9, 5, 4)
    assert tally.finished == {0, 1, 2, 3}


def test_each_threshold(config: Any) -> None:
    tally = Tally(total_mini_batches=10, total_items=20, done=3, failed_mini_batches=2, failed_items=3)
    assert threshold_breach(tally, config(), all_scheduled=True) is None
    assert threshold_breach(tally, config(error_threshold=2), all_scheduled=False) == (
        "error_threshold exceeded: 3 failed items > error_threshold 2 (3 of 10 mini-batches processed)"
    )
    assert threshold_breach(tally, config(error_threshold=3), all_scheduled=True) is None
    assert threshold_breach(tally, config(allowed_failed_count=1), all_scheduled=False) == (
        "allowed_failed_count exceeded: 2 failed mini-batches > allowed_failed_count 1 (3 of 10 mini-batches "
        "tried)"
    )
    assert threshold_breach(tally, config(allowed_failed_count=-1), all_scheduled=True) is None
    assert threshold_breach(tally, config(allowed_failed_percent=10), all_scheduled=False) is None  # not yet
    assert threshold_breach(tally, config(allowed_failed_percent=10), all_scheduled=True) == (
        "allowed_failed_percent exceeded: 2 of 10 mini-batches failed (20.0% > 10%)"
    )
    assert threshold_breach(tally, config(allowed_failed_percent=20), all_scheduled=True) is None


def test_the_verdict_in_its_order(config: Any) -> None:
    assert verdict(Tally(2, 4, done=2, succeeded_items=4), config(), "stopped by hand") == "stopped by hand"
    assert verdict(Tally(3, 4, done=2, succeeded_items=4), config(), None) == "1 mini-batches did not finish"
    assert verdict(Tally(0, 0), config(), None) == "the inputs hold no items to process"
    assert verdict(Tally(2, 4, done=2, failed_items=4), config(), None) == (
        "no item succeeded: all 4 items of 2 mini-batches failed (see logs/user/error.txt)"
    )
    failing = Tally(2, 4, done=2, succeeded_items=2, failed_items=2, failed_mini_batches=1)
    assert verdict(failing, config(), None) is None
    assert verdict(failing, config(allowed_failed_count=0), None) is not None


def test_error_threshold_minus_one_ignores_items_but_not_mini_batches_or_empty_appends(config: Any) -> None:
    """Azure: error_threshold=-1 ignores failed items (N tolerates N), so summary_only mini-batches that all
    return [] succeed; a run() that raised every time or an append_row output with no row at all do not."""
    returned_nothing = Tally(2, 4, done=2, succeeded_mini_batches=2, failed_items=4)
    assert verdict(returned_nothing, config(output_action="summary_only"), None) is None
    assert (
        verdict(returned_nothing, config(output_action="summary_only", allowed_failed_count=0), None) is None
    )
    no_item = "no item succeeded: all 4 items of 2 mini-batches failed (see logs/user/error.txt)"
    assert verdict(returned_nothing, config(), None) == no_item  # append_row: nothing to append
    assert verdict(returned_nothing, config(output_action="summary_only", error_threshold=4), None) is None
    assert verdict(returned_nothing, config(output_action="summary_only", error_threshold=3), None) == no_item
    all_raised = Tally(2, 4, done=2, failed_mini_batches=2, failed_items=4)
    assert verdict(all_raised, config(output_action="summary_only"), None) == no_item
    assert (
        verdict(Tally(0, 0), config(output_action="summary_only"), None)
        == "the inputs hold no items to process"
    )
    unfinished = Tally(2, 4, done=1, succeeded_mini_batches=1, failed_items=2)
    assert verdict(unfinished, config(output_action="summary_only"), None) == "1 mini-batches did not finish"


def test_a_succeeded_summary_keeps_its_counts_and_key_order() -> None:
    tally = Tally(
        3, 6, done=3, succeeded_mini_batches=3, reused_mini_batches=1, succeeded_items=5, failed_items=1
    )
    summary = _summary(tally, None)
    document = summary.to_dict()
    assert list(document) == list(SUMMARY_KEYS)
    assert document == {
        "status": "succeeded",
        "total_items": 6,
        "succeeded_items": 5,
        "failed_items": 1,
        "total_mini_batches": 3,
        "succeeded_mini_batches": 3,
        "failed_mini_batches": 0,
        "reused_mini_batches": 1,
        "output": "/out",
        "append_row_file": "/out/x.txt",
        "logs_dir": "/out/logs",
        "cache_key": "k",
        "duration_s": 1.235,
    }
    assert JobSummary.from_dict(document) == summary and summary.succeeded


def test_a_failed_summary_counts_everything_unfinished_as_failed() -> None:
    tally = Tally(
        4, 8, done=2, succeeded_mini_batches=1, succeeded_items=2, failed_mini_batches=1, failed_items=2
    )
    summary = _summary(tally, "the job was cancelled")
    document = summary.to_dict()
    assert list(document) == [*SUMMARY_KEYS, "message"]
    assert document["message"] == "Job failed: the job was cancelled"
    assert (document["failed_items"], document["failed_mini_batches"]) == (6, 3)
    noted = summary.with_note("could not write the job's logs (x)")
    assert noted.message == "Job failed: the job was cancelled; also could not write the job's logs (x)"
    assert JobSummary.from_dict(noted.to_dict()) == noted


def test_a_summary_of_a_job_that_never_started_reads_back() -> None:
    summary = JobSummary.from_dict({"status": "failed", "message": "Job failed: stopped (before it started)"})
    assert not summary.succeeded and summary.total_items == 0 and summary.append_row_file is None
    with pytest.raises(ValueError, match="not a job summary"):
        JobSummary.from_dict({"status": "error", "message": "boom"})


def test_a_mini_batch_awaiting_a_retry_counts_against_allowed_failed_count(config: Any) -> None:
    tally = Tally(10, 20)
    tally.note_started([0, 1, 2])
    tally.note_retry(_mb(0))
    assert threshold_breach(tally, config(allowed_failed_count=1), all_scheduled=False) is None
    assert threshold_breach(tally, config(allowed_failed_count=0), all_scheduled=False) == (
        "allowed_failed_count exceeded: 1 failed mini-batches, 1 of them awaiting a retry > allowed_failed_count 0 "
        "(3 of 10 mini-batches tried)"
    )
    tally.record(_mb(0), _ok(0))  # the retry succeeded: no longer counted
    assert threshold_breach(tally, config(allowed_failed_count=0), all_scheduled=False) is None
    assert (tally.failing_mini_batches, tally.attempted) == (0, 3)


def test_a_tally_of_a_listing_plan_claims_no_total_and_judges_no_share(config: Any) -> None:
    """While the inputs are listed (streaming planning) the totals grow with the plan; a share of the
    total (`allowed_failed_percent`) waits for the listing's end, counts are judged at once."""
    tally = Tally(0, 0, listing=True)
    for index in range(4):
        tally.plan(_mb(index))
    tally.record(_mb(0), _failed(0))
    assert (tally.total_mini_batches, tally.total_items) == (4, 8)
    percent = config(allowed_failed_percent=10)
    assert threshold_breach(tally, percent, all_scheduled=True) is None
    breach = threshold_breach(tally, config(error_threshold=1), all_scheduled=False)
    assert breach is not None and "(1 of 4 mini-batches listed so far processed)" in breach
    tally.listed()
    assert "allowed_failed_percent exceeded: 1 of 4" in str(
        threshold_breach(tally, percent, all_scheduled=True)
    )
