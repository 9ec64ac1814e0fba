"""The end of a job: the processes' leftover files, the verdict, the logs' error summary, the assembled
output, the summary, logs/job_result.txt, report.html, the final progress.json, and a remote folder's
logs uploaded; the output folder is left (staging removed, lock released) whatever happens."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..logs.failed_items import FAILED_ITEMS_FILE, failed_item_lines, write_failed_items
from ..logs.job_record import job_record, write_job_record
from ..logs.joblogs import JobLogs
from ..spill import SpillError
from ..summary import JobSummary, summarise, verdict
from .allocator import large_blocks_returned
from .stopping import StopRecord, stamp

if TYPE_CHECKING:
    from .loop import JobDriver


def finish_job(driver: JobDriver) -> dict[str, Any]:
    """Assembles the output (unless the job failed) and writes the summary; temp files never outlive it."""
    try:
        note = driver.files.collect_leftovers(driver.spec.staging_url)
        if note:
            driver.logs.master(note)
        return _summarise(driver).to_dict()
    finally:
        driver.folder.leave()
        driver.sink.close()  # the commit log's spill: the output is assembled (or never will be)


def with_unlisted_note(message: str | None, listed: int) -> str:
    """The message of a job stopped before its listing ended: its totals count only the mini-batches
    listed by then, which it says after the message (or alone). A stop can come at any point of a listing
    that runs beside the job."""
    note = f"the inputs were not listed to the end: the totals count the {listed} mini-batches listed before the job stopped"
    return f"{message}; {note}" if message else note


def _summarise(driver: JobDriver) -> JobSummary:
    logs = driver.logs
    message = verdict(driver.tally, driver.config, driver.stop.reason)
    if driver.tally.listing:  # stopped while listing: never a success, and the totals say what they count
        message = with_unlisted_note(message, driver.tally.total_mini_batches)
    logs.close()
    error_lines = logs.write_error_summary()
    failed_lines = _write_rerun_data(driver)
    if logs.write_error:  # logs that cannot explain the job: fail it before presenting an output
        log_failure = f"could not write the job's logs ({logs.write_error})"
        message = f"{message}; also {log_failure}" if message else log_failure
    append_row_file = None
    if message is None and driver.config.output_action == "append_row":
        append_row_file, message = driver.sink.assemble(driver.config.output_file_name)
    summary = summarise(
        driver.tally,
        message=message,
        output=driver.output,
        append_row_file=append_row_file,
        logs_dir=driver.folder.log_url,
        cache_key=driver.cache_key,
        duration_s=driver.elapsed(),
    )
    summary = _write_result(driver, summary, error_lines, failed_lines)
    if driver.stop.stopped_at is not None and driver.folder.local:
        driver.folder.leave()  # a stop must finish within the caller's kill window: the report may not
    _write_report(logs, driver.log_root)
    driver.progress.write(summary.status, summary.to_dict())  # after the report: "ended" means all is there
    if not driver.folder.local:
        driver.progress.join_copy()
        driver.folder.upload_logs(driver.log_root)
    return summary


def _write_rerun_data(driver: JobDriver) -> int | None:
    """logs/sys/job_report/failed_items.jsonl and logs/sys/job.json, what `--rerun-failed` reads; the number
    of failed-item lines (None when they could not be written: a failed write is a log shortfall)."""
    tally, plan = driver.tally, driver.plan
    # only the mini-batches that have lines are read (a plan kept on disk reads each back)
    listed = (
        plan.batch(index)
        for index in range(len(plan))
        if index in tally.failures or index not in tally.finished
    )
    lines = failed_item_lines(
        listed, tally.failures, tally.finished, driver.stop.reason, driver.logs.last_failures
    )
    try:
        count = write_failed_items(driver.log_root, lines)
        if not driver.tally.listing:  # a partial plan is no job to re-run: --rerun-failed refuses the folder
            write_job_record(driver.log_root, job_record(driver))
    except (OSError, SpillError) as exc:  # a damaged plan spill: the job failed on it already
        if driver.logs.write_error is None:
            driver.logs.write_error = f"{FAILED_ITEMS_FILE}: {exc}"
        return None
    return count


def _write_result(
    driver: JobDriver, summary: JobSummary, error_lines: list[str], failed_lines: int | None = None
) -> JobSummary:
    """logs/job_result.txt and the result line; a log write that failed meanwhile becomes a note of a
    failed job's message (a succeeded job's output stays presented, with a warning)."""
    logs = driver.logs
    lines = result_lines(summary, error_lines, driver.stop.stopped(), driver.speculation.line())
    if failed_lines:
        lines[1:1] = [
            f"Failed items: logs/{FAILED_ITEMS_FILE} ({failed_lines} line(s)); re-run only them with "
            "`airflow-parallel-run run --rerun-failed <output folder>` or rerun_failed=True"
        ]
    complete = logs.write_error is None
    logs.result(lines)
    logs.master(f"result: {summary.status}" + (f" - {summary.message}" if summary.message else ""))
    driver.progress.say(lines[0])
    if complete and logs.write_error:  # the summary above may not have reached the disk
        note = f"could not write the job's logs ({logs.write_error}); logs/job_result.txt may be incomplete"
        if summary.message is not None:
            return summary.with_note(note)
        driver.progress.say(
            f"Warning: {note}"
        )  # the output is complete and stays presented; only its logs fell short
    return summary


def prepare_report() -> threading.Thread:
    """Imports the report's code (plotly) in a daemon thread while the job runs: in a fresh process (each
    Airflow task is one) that import and the first build's set-up would otherwise delay the job's return.
    Best effort: a failure here is silent; `_write_report` imports it again and logs its own error."""

    def load() -> None:
        with contextlib.suppress(Exception):
            from ..logs.report import warm_up  # lazy: keeps plotly out of the workers' imports

            warm_up()

    thread = threading.Thread(target=load, name="apr-report-warm-up", daemon=True)
    thread.start()
    return thread


def _write_report(logs: JobLogs, log_root: str) -> None:
    from ..logs.report import build_report  # lazy: keeps plotly out of the workers' imports

    large_blocks_returned()  # in a process the engine owns: the build's arrays go back when freed
    try:
        build_report(log_root)
    except Exception as exc:  # noqa: BLE001 - the report is a convenience; the job's result stands
        logs.master(f"could not write report.html: {type(exc).__name__}: {exc}")


def result_lines(
    summary: JobSummary,
    error_lines: Sequence[str],
    stopped: StopRecord | None,
    speculation: str | None = None,
) -> list[str]:
    """What logs/job_result.txt says: the outcome, how a stopped job stopped (`StopRecord`), what
    speculative execution did, the first errors, and the summary document."""
    if summary.succeeded:
        lines = [
            f"Job succeeded: {summary.succeeded_items} of {summary.total_items} items succeeded, "
            f"{summary.failed_items} failed, in {summary.total_mini_batches} mini-batches "
            f"({summary.reused_mini_batches} reused).",
            f"Output: {summary.append_row_file or summary.output}",
        ]
    else:
        lines = [str(summary.message), "Start with logs/user/error.txt; each line names the full trace."]
    if stopped is not None:
        reason = (stopped.reason.splitlines() or [""])[0]  # the details (a watchdog's log tails) are above
        ended = f"{stopped.leftovers} process(es) the entry script left running ended"
        if stopped.unanswered_s is not None:
            ended += (
                f" on the workers that answered within {stopped.unanswered_s:g} s; the others end theirs "
                "uncounted (see logs/sys/node/<ip>/<process>.txt)"
            )
        lines.append(
            f"Stopped at {stamp(stopped.at)} UTC ({reason}): {stopped.cancelled} running attempt(s) cancelled, "
            f"{ended}."
        )
    if speculation:
        lines.append(speculation)
    if error_lines:
        lines += ["", "Errors (logs/user/error.txt):", *error_lines[:20]]
    return [*lines, "", json.dumps(summary.to_dict(), indent=2)]
