"""The engine. Never imports Airflow: Dask workers on a remote cluster must not need it."""

from .config import ParallelRunConfig
from .datasets import FileDataset, TabularDataset
from .driver import JobDriver, run_job
from .entry_script import EntryScript
from .errors import ConfigError, InputError, JobFailedError, ParallelRunError

__all__ = [
    "ConfigError",
    "EntryScript",
    "FileDataset",
    "InputError",
    "JobDriver",
    "JobFailedError",
    "ParallelRunConfig",
    "ParallelRunError",
    "TabularDataset",
    "run_job",
]
