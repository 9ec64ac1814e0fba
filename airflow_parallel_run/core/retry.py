"""The retry policy: what the driver does with an attempt's outcome, as pure functions of it.

A successful attempt is committed; a cancelled one is dropped (the job is stopping; it is never tried
again and is not a final failure); a failed one runs again while tries are left, the job is not
stopping and another try could read other data (`AttemptResult.retriable`); otherwise the mini-batch
has failed for good. Separately, init() failing again and again before anything succeeded stops the
job (`InitFailures`): every process would fail the same way, and retrying would only multiply the
failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .attempt import AttemptResult, AttemptStage, AttemptStatus


class Step(Enum):
    COMMIT = "commit"  # succeeded (or reused): count it and publish its part
    RETRY = "retry"  # failed, another try is due
    FAIL = "fail"  # failed for good: count it as failed
    DROP = "drop"  # cancelled by a stop: neither retried nor counted


def should_retry(result: AttemptResult, attempt: int, run_max_try: int) -> bool:
    """A failed attempt runs again while tries are left; a cancelled one never does, nor one whose source
    says another try would read the same wrong data."""
    return (
        not result.ok
        and result.status is not AttemptStatus.CANCELLED
        and result.retriable
        and attempt < run_max_try
    )


def next_step(result: AttemptResult, attempt: int, run_max_try: int, *, stopping: bool) -> Step:
    """What the driver does with attempt number `attempt` of a mini-batch (1-based)."""
    if result.ok:
        return Step.COMMIT
    if result.status is AttemptStatus.CANCELLED:
        return Step.DROP
    if should_retry(result, attempt, run_max_try) and not stopping:
        return Step.RETRY
    return Step.FAIL


def failed_in_init(result: AttemptResult) -> bool:
    """init() raised, timed out, or its process died while it ran (a stop's cancel is not a failure)."""
    return (
        not result.ok and result.status is not AttemptStatus.CANCELLED and result.stage is AttemptStage.INIT
    )


@dataclass
class InitFailures:
    """init() failing `limit` times before any mini-batch succeeded stops the job instead of retrying.

    The count never resets: once a mini-batch succeeded, init() failures are ordinary failed attempts
    (one bad host, a flaky download) and are retried like any other.
    """

    limit: int
    count: int = 0

    @classmethod
    def for_slots(cls, slots: int) -> InitFailures:
        """Every process failing once, twice over (at least 3): no host's init() can work."""
        return cls(max(3, 2 * slots))

    def note(self, result: AttemptResult, any_succeeded: bool) -> str | None:
        """Counts an init() failure; returns the job's stop reason once the limit is reached."""
        if any_succeeded or not failed_in_init(result):
            return None
        self.count += 1
        if self.count < self.limit:
            return None
        return (
            f"init() failed {self.count} times and no mini-batch has succeeded, so the job stops instead of "
            f"retrying: {result.error} (full trace: logs/{result.error_file or 'user/error.txt'})"
        )
