"""The job's accounting, as pure functions: the running tally, the thresholds, the verdict, and the summary.

Every input item ends as exactly one of succeeded or failed. While the job runs, `Tally` counts what
its finished mini-batches hold (and which failed an attempt and await a retry); `threshold_breach` says
when a threshold (`error_threshold`, `allowed_failed_count` on every failed attempt, `allowed_failed_percent`)
stops it; at the end `verdict` says why it failed (or
nothing) and `summarise` writes the `JobSummary`: the document the CLI prints with `--json`, the
operator returns as its XCom value and `logs/job_result.txt` ends with (keys and order in
/work/shared/DESIGN.md, result summary).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from .attempt import AttemptResult
from .minibatch import MiniBatch
from .numbers import NumberSet

if TYPE_CHECKING:
    from .config import ParallelRunConfig


@dataclass
class Tally:
    """What the finished mini-batches of a job hold, counted as they finish."""

    total_mini_batches: int
    total_items: int
    done: int = 0
    succeeded_mini_batches: int = 0
    failed_mini_batches: int = 0
    reused_mini_batches: int = 0
    succeeded_items: int = 0
    failed_items: int = 0
    finished: NumberSet = field(default_factory=NumberSet)  # a bit per mini-batch (core/numbers.py)
    retrying: set[int] = field(default_factory=set)  # last attempt failed, another is due
    started: NumberSet = field(default_factory=NumberSet)  # submitted at least once
    # the final outcome of every mini-batch that failed, whole or in part (logs/sys/job_report/failed_items.jsonl)
    failures: dict[int, AttemptResult] = field(default_factory=dict)
    # the inputs are still being listed (core/driver/planning.py): the totals count what is listed so far
    listing: bool = False

    def plan(self, mb: MiniBatch) -> None:
        """A mini-batch listed while the job runs joins the totals."""
        self.total_mini_batches += 1
        self.total_items += mb.items

    def listed(self) -> None:
        """The listing ended: the totals are the job's."""
        self.listing = False

    @property
    def of_total(self) -> str:
        """The total in words: "N mini-batches", or, while the inputs are listed, "N mini-batches listed so far"."""
        return f"{self.total_mini_batches} mini-batches" + (" listed so far" if self.listing else "")

    def note_started(self, indices: Iterable[int]) -> None:
        """Mini-batches whose attempt was just submitted (counted once, however often they are tried)."""
        self.started.update(indices)

    def note_retry(self, mb: MiniBatch) -> None:
        """A mini-batch's attempt failed and another is due: until one succeeds it counts against
        `allowed_failed_count`, as Azure checks between a first and a second try."""
        self.retrying.add(mb.index)

    @property
    def failing_mini_batches(self) -> int:
        """Mini-batches failed for good plus those whose last attempt failed and await a retry."""
        return self.failed_mini_batches + len(self.retrying)

    @property
    def attempted(self) -> int:
        """Mini-batches tried so far (finished, awaiting a retry or running)."""
        return max(self.done, len(self.started | self.finished | self.retrying))

    def record(self, mb: MiniBatch, result: AttemptResult) -> None:
        """Counts a mini-batch's final outcome (a success, a reuse, or its last failed attempt)."""
        self.finished.add(mb.index)
        self.retrying.discard(mb.index)
        self.done += 1
        self.total_items += result.total - mb.items  # the reader's count wins over the planner's estimate
        if result.ok:
            self.succeeded_mini_batches += 1
            self.reused_mini_batches += int(result.reused)
            self.succeeded_items += result.succeeded
            self.failed_items += result.failed
        else:
            self.failed_mini_batches += 1
            self.failed_items += result.total
        if not result.ok or result.failed > 0:
            self.failures[mb.index] = replace(result, traceback="")  # the trace is in logs/user/error/


def threshold_breach(tally: Tally, config: ParallelRunConfig, *, all_scheduled: bool) -> str | None:
    """Which threshold the failures so far exceed, in words (None: none). `allowed_failed_percent` is
    judged only once every mini-batch is scheduled: early failures are a large share of a few."""
    t = tally
    if config.error_threshold != -1 and t.failed_items > config.error_threshold:
        return (
            f"error_threshold exceeded: {t.failed_items} failed items > error_threshold {config.error_threshold} "
            f"({t.done} of {t.of_total} processed)"
        )
    allowed = config.allowed_failed_count
    if allowed not in (None, -1) and t.failing_mini_batches > allowed:
        awaiting = f", {len(t.retrying)} of them awaiting a retry" if t.retrying else ""
        return (
            f"allowed_failed_count exceeded: {t.failing_mini_batches} failed mini-batches{awaiting} > "
            f"allowed_failed_count {allowed} ({t.attempted} of {t.of_total} tried)"
        )
    percent_allowed = config.allowed_failed_percent
    if percent_allowed is not None and all_scheduled and not t.listing and t.total_mini_batches:
        percent = 100.0 * t.failed_mini_batches / t.total_mini_batches
        if percent > percent_allowed:
            return (
                f"allowed_failed_percent exceeded: {t.failed_mini_batches} of {t.total_mini_batches} mini-batches "
                f"failed ({percent:.1f}% > {percent_allowed:g}%)"
            )
    return None


def _item_failures_ignored(tally: Tally, config: ParallelRunConfig) -> bool:
    """Whether a job where no item succeeded may still succeed, as on Azure, where only `error_threshold`
    judges failed items: -1 ignores them (a training run() returning [] for each partition), N tolerates N.
    Only when some mini-batch ran to the end (a run() that raised every time fails the job) and nothing is
    to be appended (append_row with no row at all fails, as Azure's "There is no succeeded mini batch item
    returned from run()")."""
    return (
        config.output_action == "summary_only"
        and tally.succeeded_mini_batches > 0
        and (config.error_threshold == -1 or tally.failed_items <= config.error_threshold)
    )


def verdict(tally: Tally, config: ParallelRunConfig, stop_reason: str | None) -> str | None:
    """Why the job failed, or None: its stop reason, mini-batches that never finished, inputs without
    items, nothing succeeded (unless item failures are ignored, see `_item_failures_ignored`), or a
    threshold (in that order)."""
    if stop_reason is not None:
        return stop_reason
    unfinished = tally.total_mini_batches - tally.done
    if unfinished:
        return f"{unfinished} mini-batches did not finish"
    if tally.total_items == 0:
        return "the inputs hold no items to process"
    if tally.succeeded_items == 0 and not _item_failures_ignored(tally, config):
        return (
            f"no item succeeded: all {tally.total_items} items of {tally.total_mini_batches} mini-batches failed "
            "(see logs/user/error.txt)"
        )
    return threshold_breach(tally, config, all_scheduled=True)


#: The summary's keys in their documented order (`message` follows them when the job failed).
SUMMARY_KEYS = (
    "status",
    "total_items",
    "succeeded_items",
    "failed_items",
    "total_mini_batches",
    "succeeded_mini_batches",
    "failed_mini_batches",
    "reused_mini_batches",
    "output",
    "append_row_file",
    "logs_dir",
    "cache_key",
    "duration_s",
)
#: The keys that say where a job's files are: left out of the figures shown beside a job (the Airflow
#: view's list, the OpenLineage facet), which take every other key, so a key added to `SUMMARY_KEYS` shows
#: there without another edit.
SUMMARY_LOCATION_KEYS = ("output", "append_row_file", "logs_dir")
#: The summary's figures: every key but the locations.
SUMMARY_FIGURE_KEYS = tuple(key for key in SUMMARY_KEYS if key not in SUMMARY_LOCATION_KEYS)


@dataclass(frozen=True)
class JobSummary:
    """The result of a job. `to_dict()` is the document users see; `message` ("Job failed: ...") only when
    the job failed."""

    status: Literal["succeeded", "failed"]
    total_items: int
    succeeded_items: int
    failed_items: int
    total_mini_batches: int
    succeeded_mini_batches: int
    failed_mini_batches: int
    reused_mini_batches: int
    output: str
    append_row_file: str | None
    logs_dir: str
    cache_key: str
    duration_s: float
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        document = {key: getattr(self, key) for key in SUMMARY_KEYS}
        if self.message is not None:
            document["message"] = self.message
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSummary:
        """A summary document read back (XCom, the cluster's metadata, job_result.txt). A document of a job
        that never started holds only `status` and `message`: the counts are 0 then."""
        status = data.get("status")
        if status not in ("succeeded", "failed"):
            raise ValueError(f"not a job summary: status {status!r}")
        return cls(
            status=status,
            total_items=int(data.get("total_items") or 0),
            succeeded_items=int(data.get("succeeded_items") or 0),
            failed_items=int(data.get("failed_items") or 0),
            total_mini_batches=int(data.get("total_mini_batches") or 0),
            succeeded_mini_batches=int(data.get("succeeded_mini_batches") or 0),
            failed_mini_batches=int(data.get("failed_mini_batches") or 0),
            reused_mini_batches=int(data.get("reused_mini_batches") or 0),
            output=str(data.get("output") or ""),
            append_row_file=data.get("append_row_file"),
            logs_dir=str(data.get("logs_dir") or ""),
            cache_key=str(data.get("cache_key") or ""),
            duration_s=float(data.get("duration_s") or 0.0),
            message=data.get("message"),
        )

    def with_note(self, note: str) -> JobSummary:
        """The failed job's message with "; also <note>" (a shortfall found after the verdict)."""
        assert self.message is not None, "only a failed job's message takes notes"
        return replace(self, message=f"{self.message}; also {note}")


def summarise(
    tally: Tally,
    *,
    message: str | None,
    output: str,
    append_row_file: str | None,
    logs_dir: str,
    cache_key: str,
    duration_s: float,
) -> JobSummary:
    """The summary of a finished job; `message` is the verdict (None: it succeeded). A failed job counts
    every item and mini-batch that did not succeed as failed, finished or not."""
    failed = bool(message)
    return JobSummary(
        status="failed" if failed else "succeeded",
        total_items=tally.total_items,
        succeeded_items=tally.succeeded_items,
        failed_items=tally.total_items - tally.succeeded_items if failed else tally.failed_items,
        total_mini_batches=tally.total_mini_batches,
        succeeded_mini_batches=tally.succeeded_mini_batches,
        failed_mini_batches=tally.total_mini_batches - tally.succeeded_mini_batches,
        reused_mini_batches=tally.reused_mini_batches,
        output=output,
        append_row_file=append_row_file,
        logs_dir=logs_dir,
        cache_key=cache_key,
        duration_s=round(duration_s, 3),
        message=f"Job failed: {message}" if failed else None,
    )
