"""`Fusion`: how many attempts one Dask task carries (a chunk, core/worker/chunk.py), chosen as the job runs.

Dask's own work per task in the driver's process (the scheduler's graph update and transitions, the
messages, the result's transfer; client, scheduler and embedded workers share one GIL) was about 8.6 of
the 11 ms that a no-op mini-batch cost (docs/performance.md). A chunk of k attempts pays it once.

k starts at 1 and stays 1 until a mini-batch succeeded (a broken init() must not fan out in chunks).
Then it follows the median wall time of the recent attempts that reached a ready process (`SAMPLES` of
them, so it adapts when the mini-batches get slower): k x median is about `CHUNK_TARGET_S` (between half
and all of it once k > 1), at most `CHUNK_MAX`, and at most what is left to submit / (2 x slots) so that
the end of the job looks as without chunks: the last attempts go one per task, and the Window
(core/driver/attempts.py) keeps at most `slots` + what is left in flight, counted in attempts. A
mini-batch of more than a tenth of a second is never fused.

No fusion with `speculative_execution`: a straggler's copy needs the driver to know when each attempt was
submitted and to stop one attempt (`supersede_on`), which a chunk would blur. A re-run of failed items
(`--rerun-failed`) fuses like any job: what differs per mini-batch travels in the job's spec
(`JobSpec.partial`) and is read by each attempt on the worker, not by the driver.
"""

from __future__ import annotations

import statistics
from collections import deque

from ..attempt import AttemptResult, AttemptStage, AttemptStatus

CHUNK_TARGET_S = 0.2  # a chunk's wall time aimed at: short against progress lines, long against Dask's cost
CHUNK_MAX = 64
SAMPLES = 255  # the recent attempt wall times the median is taken over

_UNTIMED = (AttemptStatus.CANCELLED, AttemptStatus.SPECULATIVE_LOST, AttemptStatus.REUSED)


class Fusion:
    """The chunk size of the job's next submit (see the module)."""

    def __init__(self, slots: int, enabled: bool = True) -> None:
        self.slots = max(1, slots)
        self.enabled = enabled
        self._seconds: deque[float] = deque(maxlen=SAMPLES)
        self._median: float | None = None

    def observe(self, result: AttemptResult) -> None:
        """An attempt that ran in a ready process (it got to reading its data): its wall time counts."""
        if result.status in _UNTIMED or result.reused:
            return
        if result.ok or result.stage in (AttemptStage.LOAD, AttemptStage.RUN):
            self._seconds.append(max(result.elapsed_seconds, 0.0))
            self._median = None

    def median(self) -> float | None:
        if self._median is None and self._seconds:
            self._median = statistics.median(self._seconds)
        return self._median

    def size(self, pending: int, any_succeeded: bool) -> int:
        """k for the next submit, with `pending` attempts left to submit."""
        if not self.enabled or not any_succeeded:
            return 1
        median = self.median()
        if median is None:
            return 1
        by_time = int(CHUNK_TARGET_S / median) if median > 0 else CHUNK_MAX
        return max(1, min(CHUNK_MAX, by_time, pending // (2 * self.slots)))
