"""The vocabulary of one attempt of a mini-batch: how it ended (`AttemptStatus`), where (`AttemptStage`), and
the row it leaves in `logs/sys/job_report/processed_mini-batches.csv` (`AttemptResult`).

Workers, the entry-script process, the driver, the report and the Airflow UI all speak it, so it imports
nothing of the engine: the entry-script process loads it before the user's script.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum


class AttemptStatus(str, Enum):
    """How one attempt of a mini-batch ended; the value is what processed_mini-batches.csv, error.txt and
    the UI show. Where each is decided:

    RUN_DONE            run() returned a valid result; its part (append_row) is staged      worker
    REUSED              not run: an intact cache entry stands for it                          driver (reuse)
    RUN_EXCEPTION       run() raised                                                          child
    RUN_INVALID_RESULT  run() returned what the contract forbids, or records that cannot join
                        the job's one schema                                                  child / driver
    RUN_TIMEOUT         run() exceeded run_invocation_timeout; the process was killed (an     worker
                        async run() is cancelled; its process goes only if it blocks)
    INIT_EXCEPTION      importing the script or init() raised                                 child
    INIT_TIMEOUT        init() exceeded run_invocation_timeout                                worker
    LOAD_EXCEPTION      reading the mini-batch's data failed, or an input file changed after   child /
                        the job fingerprinted it (checked as the attempt commits)             driver
    LOAD_TIMEOUT        reading exceeded load_timeout                                         worker
    PROCESS_DIED        the entry-script process died, or the Dask worker running it was lost worker / driver
    SYSTEM_ERROR        a bug of the runner itself                                            worker
    CANCELLED           the job stopped while this attempt ran (never retried; no row if it
                        never started)                                                        worker
    SPECULATIVE_LOST    speculative_execution ran a second attempt of this mini-batch and the
                        other committed first; this one was stopped. Not a failure: never
                        retried, never counted against error_threshold or run_max_try         driver
    """

    RUN_DONE = "RUN_DONE"
    REUSED = "REUSED"
    RUN_EXCEPTION = "RUN_EXCEPTION"
    RUN_INVALID_RESULT = "RUN_INVALID_RESULT"
    RUN_TIMEOUT = "RUN_TIMEOUT"
    INIT_EXCEPTION = "INIT_EXCEPTION"
    INIT_TIMEOUT = "INIT_TIMEOUT"
    LOAD_EXCEPTION = "LOAD_EXCEPTION"
    LOAD_TIMEOUT = "LOAD_TIMEOUT"
    PROCESS_DIED = "PROCESS_DIED"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELLED = "CANCELLED"
    SPECULATIVE_LOST = "SPECULATIVE_LOST"

    # The str mixin formats differently across Python 3.10-3.12 (`format()` and f-strings gave the
    # member's name on some): the value, always.
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def ok(self) -> bool:
        """The mini-batch succeeded (ran or was reused)."""
        return self in (AttemptStatus.RUN_DONE, AttemptStatus.REUSED)


class AttemptStage(str, Enum):
    """Where an attempt ended: starting its process, init(), reading its data, run(), or committing."""

    START = "start"
    INIT = "init"
    LOAD = "load"
    RUN = "run"
    COMMIT = "commit"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass
class AttemptResult:
    """The outcome of one attempt: one row of processed_mini-batches.csv."""

    index: int
    attempt: int
    status: AttemptStatus
    node: str = ""
    process: str = ""
    start_time: str = ""
    total: int = 0
    succeeded: int = 0
    elapsed_seconds: float = 0.0
    cpu_seconds: float = 0.0
    run_seconds: float = 0.0
    error: str = ""
    traceback: str = ""
    error_file: str = ""
    part_url: str | None = None
    columns: list[str] = field(default_factory=list)
    schema: bytes | None = None  # the part's Arrow schema (typed output formats), for the job's one schema
    reused: bool = False
    files: list[str] = field(default_factory=list)  # what run() wrote to its output_dir
    files_url: str | None = None  # that output_dir: this run's own (core/worker/attempt.py)
    uncacheable: str = ""  # why this attempt's result cannot be cached ("" when it can)
    stage: AttemptStage = AttemptStage.RUN  # where it ended
    retriable: bool = True  # False: its source knows another try would read the same wrong data
    # the items run() marked failed (exceptions or ItemFailed in its result): (position, first error line)
    item_errors: list[tuple[int, str]] = field(default_factory=list)
    items_url: str | None = None  # the successful results of such a run(), for a re-run of the failed items
    # its local input files as run() left them (core/inputs/identity.py; 0: not known)
    inputs_identity: int = 0

    @property
    def ok(self) -> bool:
        return self.status.ok

    @property
    def failed(self) -> int:
        return self.total - self.succeeded

    def refused(self, status: AttemptStatus, error: str, *, retriable: bool = True) -> AttemptResult:
        """This successful attempt failed as it commits (its part is neither output nor cached): the
        driver's own checks, after the worker said it succeeded."""
        return dataclasses.replace(
            self,
            status=status,
            stage=AttemptStage.COMMIT,
            error=error,
            traceback=error + "\n",
            succeeded=0,
            part_url=None,
            retriable=retriable,
        )
