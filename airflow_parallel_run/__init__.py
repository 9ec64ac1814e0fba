"""airflow-parallel-run: Azure ML ParallelRunStep-style batch inference for Airflow 3, on Dask.

Public names are re-exported lazily so that `import airflow_parallel_run.core` on a Dask worker
never imports Airflow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"  # the one version source (pyproject.toml and provider_info read it)

_CORE = {
    "ParallelRunConfig",
    "FileDataset",
    "TabularDataset",
    "EntryScript",
    "run_job",
    "ConfigError",
    "InputError",
    "ItemFailed",
}
_AIRFLOW = {
    "ParallelRunOperator": "airflow_parallel_run.operators",
    "DaskHook": "airflow_parallel_run.hooks",
    "DatasetPartitionSensor": "airflow_parallel_run.sensors",
}

__all__ = sorted(_CORE | set(_AIRFLOW))


def __getattr__(name: str) -> Any:
    if name in _CORE:
        return getattr(importlib.import_module("airflow_parallel_run.core"), name)
    if name in _AIRFLOW:
        return getattr(importlib.import_module(_AIRFLOW[name]), name)
    raise AttributeError(f"module 'airflow_parallel_run' has no attribute {name!r}")
