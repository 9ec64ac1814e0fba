"""Airflow provider metadata (entry point `apache_airflow_provider`). Must not import Airflow."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-parallel-run",
        "name": "Parallel Run (Dask)",
        "description": "ParallelRunStep-style batch inference: fan mini-batches out to a Dask cluster.",
        "versions": [__version__],
        "state": "ready",
    }
