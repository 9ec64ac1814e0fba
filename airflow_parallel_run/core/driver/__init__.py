"""The driver: runs a job's attempts on Dask, records what comes back, and finishes the job.

`JobRequest` says what a job is asked to do; `run_job` runs it; `JobDriver` is one job on a connected
client (loop.py), composed of the parts the engine's other packages provide, with its progress
(progress.py), its stop (stopping.py), its attempts in flight (attempts.py) and its end (finish.py).
The cluster (cluster.py) and jobs whose driver runs inside the cluster (remote.py) live here too.
"""

from __future__ import annotations

from .job import JobRequest, execute_request, run_job
from .loop import JobDriver

__all__ = ["JobDriver", "JobRequest", "execute_request", "run_job"]
