"""Driver-side logs under output/logs (the ParallelRunStep layout): progress, attempts, errors, result.

Writes are best-effort: a full or failing disk must not stop the driver from finishing the job and
returning its summary. The first failed write is kept in `JobLogs.write_error` for the summary to name.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..attempt import AttemptResult, AttemptStatus

ATTEMPT_COLUMNS = [
    "Mini-batch Id",
    "Attempt",
    "Node",
    "Process",
    "Start Time (UTC)",
    "Total",
    "Succeeded",
    "Failed",
    "Elapsed Seconds",
    "Process Seconds",
    "Run Method Seconds",
    "Status",
    "Error Message",
    "Mini-batch Detail",
]

#: The machine-readable progress of a running job, relative to the logs folder (the Airflow UI polls it).
PROGRESS_FILE = "sys/progress.json"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class ErrorGroup:
    status: str
    message: str
    count: int = 0
    mini_batches: list[int] = field(default_factory=list)
    trace_files: list[str] = field(default_factory=list)


def _error_key(attempt: AttemptResult) -> tuple[str, str]:
    first_line = (attempt.error or "").splitlines()[0] if attempt.error else ""
    generic = re.sub(r"mini-batch \d+", "mini-batch N", first_line)
    return attempt.status, re.sub(r"\bprocess\d{3,}\b", "processNNN", generic)


def error_head(logs_dir: str, lines: int, storage_options: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The first `lines` lines of a job's logs/user/error.txt (a local path or a URL), and its path.
    Raises OSError or ValueError when it cannot be read."""
    import fsspec

    error_file = f"{str(logs_dir).rstrip('/')}/user/error.txt"
    with fsspec.open(error_file, "r", encoding="utf-8", **storage_options) as handle:
        head = [line.rstrip("\n") for _, line in zip(range(lines), handle, strict=False)]
    return error_file, head


class JobLogs:
    """Writes the logs the driver owns; the workers write per-process logs beside them."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.write_error: str | None = None  # the first failed write: "<path>: [Errno N] <reason>"
        self.errors: dict[tuple[str, str], ErrorGroup] = {}
        # the last failed attempt of each mini-batch (traces left out): what failed_items.jsonl says of a
        # mini-batch the job stopped before its retry
        self.last_failures: dict[int, AttemptResult] = {}
        self._attempts_file: TextIO | None = None
        self._attempts_writer: Any = None
        self.path = lambda *parts: os.path.join(root, *parts)
        self._attempts_path = os.path.join(root, "sys", "job_report", "processed_mini-batches.csv")
        with self._best_effort(root):
            for folder in (
                "sys/job_report",
                "user/error",
                "user/stdout",
                "user/stderr",
                "user/entry_script_log",
            ):
                os.makedirs(os.path.join(root, folder), exist_ok=True)
        with (
            self._best_effort(self._attempts_path),
            open(self._attempts_path, "w", newline="", encoding="utf-8") as handle,
        ):
            csv.writer(handle).writerow(ATTEMPT_COLUMNS)
        for name in ("job_progress_overview.txt", os.path.join("sys", "master_role.txt")):
            with self._best_effort(self.path(name)):
                open(self.path(name), "w").close()

    @contextlib.contextmanager
    def _best_effort(self, path: str) -> Iterator[None]:
        """Runs a write; an OSError (disk full, read-only, gone) is remembered, not raised."""
        try:
            yield
        except OSError as exc:
            if self.write_error is None:
                reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.errno and exc.strerror else str(exc)
                self.write_error = f"{path}: {reason}"

    def _append(self, path: str, text: str) -> None:
        with self._best_effort(path), open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{_now()} {text}\n")

    def master(self, text: str) -> None:
        self._append(self.path("sys", "master_role.txt"), text)

    def progress(self, text: str) -> None:
        self._append(self.path("job_progress_overview.txt"), text)

    def progress_state(self, state: dict[str, Any]) -> str:
        """Rewrites `sys/progress.json` atomically (write, then rename): a reader sees the old or the new
        document, never half of one. Returns the path (the driver copies it to a remote logs folder)."""
        path = self.path(*PROGRESS_FILE.split("/"))
        tmp = f"{path}.tmp-{os.getpid()}"
        with self._best_effort(path):
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(state, separators=(",", ":")))  # C encoder (json.dump: Python)
            os.replace(tmp, path)
        return path

    def attempt(self, result: AttemptResult, detail: str, *, flush: bool = True) -> None:
        """One row of the attempts' log, flushed unless `flush` is False (a batch of reused mini-batches:
        the caller flushes once after it, `flush_attempts`; a flush per row was a write per mini-batch)."""
        if not result.ok and not result.reused and result.status is not AttemptStatus.SPECULATIVE_LOST:
            group = self.errors.setdefault(_error_key(result), ErrorGroup(*_error_key(result)))
            group.count += 1
            group.mini_batches.append(result.index)
            if result.error_file and result.error_file not in group.trace_files:
                group.trace_files.append(result.error_file)
            self.last_failures[result.index] = dataclasses.replace(result, traceback="")
        if result.ok and not result.reused:
            for _position, error in result.item_errors:  # items run() marked failed: one group per error
                generic = re.sub(r"mini-batch \d+", "mini-batch N", error)
                group = self.errors.setdefault(("ITEM_FAILED", generic), ErrorGroup("ITEM_FAILED", generic))
                group.count += 1
                group.mini_batches.append(result.index)
                if result.error_file and result.error_file not in group.trace_files:
                    group.trace_files.append(result.error_file)
        with self._best_effort(self._attempts_path):
            if self._attempts_file is None:  # kept open: one row per attempt, thousands of attempts
                self._attempts_file = open(self._attempts_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
                self._attempts_writer = csv.writer(self._attempts_file)
            self._attempts_writer.writerow(
                [
                    result.index,
                    result.attempt,
                    result.node,
                    result.process,
                    result.start_time,
                    result.total,
                    result.succeeded,
                    result.failed,
                    f"{result.elapsed_seconds:.3f}",
                    f"{result.cpu_seconds:.3f}",
                    f"{result.run_seconds:.3f}",
                    result.status,
                    result.error,
                    detail,
                ]
            )
            if flush:
                self._attempts_file.flush()

    def flush_attempts(self) -> None:
        """Writes out the attempts' rows written with `flush=False`."""
        if self._attempts_file is not None:
            with self._best_effort(self._attempts_path):
                self._attempts_file.flush()

    def error_summary_lines(self) -> list[str]:
        groups = sorted(self.errors.values(), key=lambda g: -g.count)
        lines = []
        for group in groups:
            batches = ", ".join(str(i) for i in sorted(set(group.mini_batches))[:10])
            more = " ..." if len(set(group.mini_batches)) > 10 else ""
            traces = ", ".join(f"logs/{t}" for t in group.trace_files[:3]) or "no trace"
            lines.append(
                f"{group.count} x {group.status}: {group.message} (mini-batches {batches}{more}; full trace: {traces})"
            )
        return lines

    def write_error_summary(self) -> list[str]:
        lines = self.error_summary_lines()
        path = self.path("user", "error.txt")
        with self._best_effort(path), open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines) if lines else "No errors.\n")
        return lines

    def close(self) -> None:
        if self._attempts_file is not None:
            attempts_file, self._attempts_file = self._attempts_file, None
            with self._best_effort(self._attempts_path):
                attempts_file.close()

    def result(self, lines: Iterable[str]) -> None:
        path = self.path("job_result.txt")
        with self._best_effort(path), open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
