"""The engine. Never imports Airflow: Dask workers on a remote cluster must not need it.

Names are loaded on first use, so an entry-script process (which needs only `EntryScript` and its
job's input sources) does not pay for importing the driver, the cluster code and their dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "ParallelRunConfig": "config",
    "FileDataset": "inputs.files",
    "TabularDataset": "inputs.tabular",
    "JobDriver": "driver",
    "JobRequest": "driver",
    "run_job": "driver",
    "EntryScript": "worker.entry_script",
    "ConfigError": "errors",
    "InputError": "errors",
    "OutputBusyError": "errors",
    "ParallelRunError": "errors",
    "JobSummary": "summary",
    "AttemptStatus": "attempt",
    "ItemFailed": "output.results",
}

__all__ = [
    "AttemptStatus",
    "ConfigError",
    "EntryScript",
    "FileDataset",
    "InputError",
    "ItemFailed",
    "JobDriver",
    "JobRequest",
    "JobSummary",
    "OutputBusyError",
    "ParallelRunConfig",
    "ParallelRunError",
    "TabularDataset",
    "run_job",
]

if TYPE_CHECKING:
    from .attempt import AttemptStatus
    from .config import ParallelRunConfig
    from .driver import JobDriver, JobRequest, run_job
    from .errors import ConfigError, InputError, OutputBusyError, ParallelRunError
    from .inputs.files import FileDataset
    from .inputs.tabular import TabularDataset
    from .summary import JobSummary
    from .worker.entry_script import EntryScript


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
