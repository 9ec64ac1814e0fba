"""The fused Dask task: a chunk of attempts run one after another by the per-attempt task, so that short
mini-batches pay Dask's per-task cost (scheduling, messages, the result's transfer: most of a no-op
mini-batch's cost in the driver's process) once per chunk instead of once per attempt. The driver decides
how many attempts a chunk carries (core/driver/fusion.py); one attempt alone is still its own
`run_mini_batch` task.

Each attempt of a chunk is exactly the attempt a task of its own would run, because it *is*
`run_mini_batch`: the same process lease, init(), load and run() timeouts, node log lines, part files and
statuses. The chunk only decides when to stop early, and then reports the attempts that ran (a prefix
of the chunk, in order); the driver puts the others back in its queue, unrun and not charged a try:

- an attempt failed to start its process or in init() (stage START or INIT): the next attempt would lease
  a new process and run init() again, and a chunk of 64 would burn 64 init()s on a broken host. Put back,
  each goes to Dask alone, so init() failures are counted (`retry.InitFailures`) one per attempt that met
  one, as without chunks;
- the chunk has run for `CHUNK_BUDGET_S`: its mini-batches got slower than the driver's estimate, and the
  driver must keep hearing of ended attempts (progress, the watchdog's progress_update_timeout) about
  as often as it would from tasks of their own.

A stop is not a reason to return early: each later attempt is still handed to `run_mini_batch`, which
finds the job stopped and reports the attempt as never started (CANCELLED at START, no row), exactly as a
task of its own arriving after the stop does, and within the same bounds.

A Dask worker lost while it runs a chunk: the scheduler runs the whole chunk again on another worker
(until `distributed.scheduler.allowed-failures`, then the driver gets an error and puts every attempt of
the chunk back, each alone). The attempts that had completed in the lost run then run again under the
same attempt numbers; each run writes its part and output_dir files under a token of its own
(`run_mini_batch`, as for an attempt of its own that the scheduler runs again), so the files published are
those of the run the driver books.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic

from ..attempt import AttemptResult, AttemptStage, AttemptStatus
from ..minibatch import MiniBatch
from .attempt import run_mini_batch

CHUNK_BUDGET_S = 1.0  # a chunk starts no attempt after this long (the driver aims at ~0.2 s a chunk)


def run_attempts(name: str, attempts: Sequence[tuple[MiniBatch, int]]) -> list[AttemptResult]:
    """The Dask task of a chunk: `run_mini_batch` for each (mini-batch, attempt) in order, until the chunk
    ends early (see the module); returns the results of the attempts that ran, in order."""
    results: list[AttemptResult] = []
    started = monotonic()
    for mini_batch, attempt in attempts:
        if results and (not_started(results[-1]) or monotonic() - started >= CHUNK_BUDGET_S):
            break
        results.append(run_mini_batch(name, mini_batch, attempt))
    return results


def not_started(result: AttemptResult) -> bool:
    """The attempt failed before any process was ready for it (its start, or init()); a stop's cancel is
    not one (the next attempts are reported never started by `run_mini_batch` itself)."""
    return (
        result.status is not AttemptStatus.CANCELLED
        and not result.ok
        and result.stage in (AttemptStage.START, AttemptStage.INIT)
    )
