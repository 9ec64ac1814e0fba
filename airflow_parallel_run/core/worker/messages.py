"""What the worker's runner and the entry-script process say to each other, as typed messages.

Over the process's socket (pickled): the runner sends `Setup` once, then a `Run` per attempt and
`Shutdown` at the end of the job; the entry-script process says `Started` as soon as it runs (the
interpreter and the engine's own imports are up: what follows is the user's), answers `Ready` (or
`Failed`) after importing the script and running init(),
`Loaded` then `Done` (or `Failed`) per attempt, and `Bye` after shutdown(). `Loaded`, `Done` and an
attempt's `Failed` name their attempt (`key`), so that several attempts can be in flight in one process
(an `async def run()` with `max_concurrency_per_process` > 1): the runner routes each answer to the
attempt that waits for it.

Waiting for an answer can also end in `TIMED_OUT`, `DIED` or `CANCELLED`: outcomes of the runner's own
wait, never sent. The module imports only the attempt vocabulary and the mini-batch descriptors: the
entry-script process loads it before the user's script.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..attempt import AttemptStage, AttemptStatus
from ..inputs.side_check import SideInput
from ..minibatch import MiniBatch
from .undeclared_reads import WatchedReads

#: Why an attempt that found its job stopped started nothing (the driver books no row for it).
NEVER_STARTED = "the job was stopped before this attempt started"


# -- runner -> entry-script process ----------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """Once, right after the process starts: where it runs, what it runs, and how it writes results."""

    logging_level: str
    working_dir: str
    script_dir: str
    entry_script: str
    arguments: tuple[str, ...]
    datasets: tuple[Any, ...]  # the job's inputs, by MiniBatch.input_index
    output_action: str
    append_row_format: str
    storage_options: Mapping[str, Any] = field(repr=False)
    output_dir: str  # the process's own output_dir outside run() (core/output/files.py)
    run_invocation_timeout: float = 60.0  # an async run() is cancelled after it, in the process itself
    max_concurrency: int = 1  # attempts the runner may have in flight here (async run() only)
    batch_format: str = "pandas"  # what run() gets for a tabular mini-batch (core/inputs/batch_format.py)
    side_checks: tuple[SideInput, ...] = ()  # local side inputs as keyed (core/inputs/side_check.py)
    side_paths: tuple[str, ...] = ()  # every side input's local path here (keyed code may live there too)
    # local paths the job's arguments and environment variables name (core/worker/undeclared_reads.py)
    watched_reads: WatchedReads = field(default_factory=WatchedReads)


@dataclass(frozen=True)
class PartialRun:
    """A re-run of the items a mini-batch's run() marked failed (core/reuse/rerun.py): run() gets only the
    items at `positions`, and its results join the previous job's successful ones (`items_url`, the list
    its run() returned without the failed entries, in input order; "" for summary_only) in input order,
    so the part is the one a run of the whole mini-batch writes."""

    positions: tuple[int, ...]
    items_url: str = ""
    items_sha256: str = ""  # what the previous job's record says those bytes are: checked before unpickling


@dataclass(frozen=True)
class Run:
    """One attempt of one mini-batch: read it, run() it, write its part to `part_url` (and, when run()
    marked items failed, its successful results to `items_url`, for a re-run of only those items)."""

    mini_batch: MiniBatch
    attempt: int
    part_url: str
    files_url: str  # the attempt's own output_dir during run()
    items_url: str = ""
    partial: PartialRun | None = None


@dataclass(frozen=True)
class Shutdown:
    """The job ends: run the script's shutdown() and exit."""


# -- entry-script process -> runner ----------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    """First, before the script is imported: the process is up. `run_invocation_timeout` bounds init() from
    here, so that a slow interpreter start (a loaded machine, a cold disk) is not charged to init()."""


@dataclass(frozen=True)
class Ready:
    init_seconds: float
    async_run: bool = False  # run() is a coroutine function: the process cancels it at the timeout


@dataclass(frozen=True)
class Loaded:
    index: int
    attempt: int
    total: int
    load_seconds: float


@dataclass(frozen=True)
class Done:
    index: int
    attempt: int
    total: int
    succeeded: int
    run_seconds: float
    cpu_seconds: float
    part_url: str | None = None
    columns: tuple[str, ...] = ()
    schema: bytes | None = None
    files: tuple[str, ...] = ()
    uncacheable: str = ""
    # the items run() marked failed: (position in the mini-batch, first line of the error, its whole text)
    item_errors: tuple[tuple[int, str, str], ...] = ()
    items_url: str | None = None  # the successful results, when items failed (for a re-run of those)
    # its local input files as run() left them: core/inputs/identity.py (0: not known)
    inputs_identity: int = 0


@dataclass(frozen=True)
class Failed:
    status: AttemptStatus
    stage: AttemptStage
    message: str
    traceback: str = ""
    retriable: bool = True  # False: another try would read the same wrong data (DataChangedError)
    index: int | None = None  # the attempt it answers (None: init(), or a runner-side outcome)
    attempt: int | None = None


@dataclass(frozen=True)
class Bye:
    """shutdown() ran (or there was none); the process exits next."""


ToChild = Setup | Run | Shutdown
AttemptKey = tuple[int, int]  # (mini-batch index, attempt number)


def answer_key(message: object) -> AttemptKey | None:
    """The attempt an answer of the entry-script process belongs to (None: the process's own)."""
    if isinstance(message, (Loaded, Done)):
        return (message.index, message.attempt)
    if isinstance(message, Failed) and message.index is not None and message.attempt is not None:
        return (message.index, message.attempt)
    return None


FromChild = Started | Ready | Loaded | Done | Failed | Bye


# -- the runner's own wait outcomes (never pickled) -----------------------------------------------------
class TimedOut:
    """No answer within the wait's limit."""

    def __repr__(self) -> str:
        return "TIMED_OUT"


class Died:
    """The process ended (or its socket closed) while the job still ran."""

    def __repr__(self) -> str:
        return "DIED"


class Cancelled:
    """The job stopped while the runner waited."""

    def __repr__(self) -> str:
        return "CANCELLED"


TIMED_OUT, DIED, CANCELLED = TimedOut(), Died(), Cancelled()
WaitOutcome = FromChild | TimedOut | Died | Cancelled
