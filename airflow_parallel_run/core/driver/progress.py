"""What a running job tells: progress lines (the task log, the CLI, job_progress_overview.txt), and
`logs/sys/progress.json`, which the Airflow UI polls (counters, rate, ETA, the latest failed attempts).

A line at each new 10 % of finished mini-batches and at least every `PROGRESS_INTERVAL_S`; the file with
each line, and of a local output folder at most every `PROGRESS_FILE_INTERVAL_S` in between. A remote
logs folder gets a copy of the file with each line, from a background thread (a slow store never holds
up the driver loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ..attempt import AttemptResult
from ..logs.joblogs import PROGRESS_FILE, JobLogs
from ..storage import filesystem, join
from ..summary import Tally

log = logging.getLogger("airflow_parallel_run")
PROGRESS_INTERVAL_S = 10.0  # job_progress_overview.txt and the task log: at least this often
PROGRESS_FILE_INTERVAL_S = 2.0  # logs/sys/progress.json of a local output folder: at most this often
RECENT_ERRORS = 20  # failed attempts kept in progress.json while the job runs
# A remote progress.json copy still running when the job ends is awaited this long, so a late copy
# never replaces the final document.
PROGRESS_COPY_JOIN_S = 30.0

ProgressCallback = Callable[[str], None]


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """The progress of one job. `stop_reason` is read when a document is written."""

    def __init__(
        self,
        job_id: str,
        logs: JobLogs,
        tally: Tally,
        *,
        log_url: str,
        local: bool,
        storage_options: Mapping[str, Any],
        callback: ProgressCallback | None,
        stop_reason: Callable[[], str | None],
        started: tuple[float, float],
    ) -> None:
        """`started`: when the job started, (time.monotonic(), time.time())."""
        self.job_id = job_id
        self.logs = logs
        self.tally = tally
        self.log_url = log_url
        self.local = local
        self.storage_options = dict(storage_options)
        self.callback = callback
        self.stop_reason = stop_reason
        self.started, self.started_at = started
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self._written = 0.0
        self._last_line = time.monotonic()
        self._last_step = -1
        self._copy: threading.Thread | None = None
        self._copy_failed = False

    # -- lines ---------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A progress line: the overview file, progress.json, and the caller's callback (or the log)."""
        self.logs.progress(text)
        self.write()
        if self.callback is not None:
            log.debug(text)  # the callback shows it; logging it too would print every line twice
            self.callback(text)
        else:
            log.info(text)

    def line(self) -> str:
        t = self.tally
        rate, seconds_left = self.rate_eta()
        if t.listing:  # no total yet: neither a share nor an ETA, which would claim one
            return (
                f"Processed {t.done} of {t.total_mini_batches} mini-batches listed so far (listing the inputs...): "
                f"{t.succeeded_items} items succeeded, {t.failed_items} failed; {rate:.1f} items/s"
            )
        eta = format_eta(seconds_left) if seconds_left is not None else "unknown"
        pct = 100 * t.done // max(t.total_mini_batches, 1)
        return (
            f"Processed {t.done} of {t.total_mini_batches} mini-batches ({pct}%): {t.succeeded_items} items "
            f"succeeded, {t.failed_items} failed; {rate:.1f} items/s; ETA {eta}"
        )

    def after_record(self) -> None:
        """After an attempt was booked: a line when the finished share reached a new 10 % step."""
        if self.tally.listing:
            return  # a share of a total not known yet: the interval's lines only
        step = 10 * self.tally.done // max(self.tally.total_mini_batches, 1)
        if step != self._last_step:
            self.say(self.line())
            self._last_line, self._last_step = time.monotonic(), step

    def tick(self) -> None:
        """Each turn of the driver loop: a line every `PROGRESS_INTERVAL_S`, else the file of a local
        folder every `PROGRESS_FILE_INTERVAL_S`."""
        now = time.monotonic()
        if now - self._last_line >= PROGRESS_INTERVAL_S:
            self.say(self.line())
            self._last_line = time.monotonic()
        elif self.local and now - self._written >= PROGRESS_FILE_INTERVAL_S:
            self.write()

    def started_running(self) -> None:
        """The loop starts: the interval counts from here."""
        self._last_line, self._last_step = time.monotonic(), -1

    def rate_eta(self) -> tuple[float, float | None]:
        """Items per second since the start, and the seconds left at that rate (None before any item)."""
        t = self.tally
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (t.succeeded_items + t.failed_items) / elapsed
        remaining_items = max(t.total_items - t.succeeded_items - t.failed_items, 0)
        return rate, (remaining_items / rate if rate > 0 and not t.listing else None)

    def note_error(self, result: AttemptResult, final: bool) -> None:
        """A failed attempt for progress.json: what the UI shows as the latest errors while the job runs."""
        lines = (result.error or result.status).splitlines()
        self.recent_errors.append(
            {
                "mini_batch": result.index,
                "attempt": result.attempt,
                "status": result.status,
                "message": (lines[0] if lines else result.status)[:500],
                "trace_file": result.error_file or None,
                "final": final,
                "time": time.time(),
            }
        )

    # -- progress.json -------------------------------------------------------------------------------
    def document(self, state: str = "running", summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What `logs/sys/progress.json` holds: counters, rate, ETA and the latest failed attempts.

        `state` is ``running`` until the summary exists, then the summary's status; the final document
        carries the summary itself. Counts only: no configuration values (environment variables may hold
        secrets) and no input data.
        """
        t = self.tally
        rate, eta = self.rate_eta()
        return {
            "version": 1,
            "job_id": self.job_id,
            "state": state,
            "started": self.started_at,
            "updated": time.time(),
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "total_mini_batches": None if t.listing else t.total_mini_batches,
            "listed_mini_batches": t.total_mini_batches,
            "listing": t.listing,
            "done_mini_batches": t.done,
            "succeeded_mini_batches": t.succeeded_mini_batches,
            "failed_mini_batches": t.failed_mini_batches,
            "reused_mini_batches": t.reused_mini_batches,
            "total_items": None if t.listing else t.total_items,
            "succeeded_items": t.succeeded_items,
            "failed_items": t.failed_items,
            "items_per_s": round(rate, 3),
            "eta_s": None if eta is None else round(eta, 1),
            "stop_reason": self.stop_reason(),
            "recent_errors": list(self.recent_errors),
            "summary": dict(summary) if summary is not None else None,
        }

    def write(self, state: str = "running", summary: Mapping[str, Any] | None = None) -> None:
        """Rewrites logs/sys/progress.json. A remote logs folder gets a copy with each progress line
        (the final document travels with the rest of the logs)."""
        self._written = time.monotonic()
        path = self.logs.progress_state(self.document(state, summary))
        if self.local or state != "running":
            return
        if self._copy is not None and self._copy.is_alive():
            return  # a slow store: the next progress line carries a newer document
        try:
            with open(path, "rb") as handle:
                document = handle.read()
        except OSError:
            return
        self._copy = threading.Thread(
            target=self._copy_to_store, args=(document,), name=f"apr-progress-{self.job_id}", daemon=True
        )
        self._copy.start()

    def _copy_to_store(self, document: bytes) -> None:
        """Puts progress.json into the remote logs folder, off the driver loop (a store may be slow)."""
        try:
            fs, remote = filesystem(join(self.log_url, PROGRESS_FILE), self.storage_options)
            fs.pipe_file(remote, document)
        except Exception as exc:  # noqa: BLE001 - progress is a convenience; the job goes on
            if not self._copy_failed:
                self._copy_failed = True
                self.logs.master(
                    f"could not copy progress.json to {self.log_url}: {type(exc).__name__}: {exc}"
                )

    def join_copy(self) -> None:
        """A late copy must not replace the final document (uploaded with the logs)."""
        if self._copy is not None:
            self._copy.join(timeout=PROGRESS_COPY_JOIN_S)
