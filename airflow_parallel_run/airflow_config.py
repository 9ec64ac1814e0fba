"""What the operator and the sensor read from Airflow's configuration, in one place: the cache root
(`[parallel_run] cache_root`), the folders a job's output may never touch, `[operators]
default_deferrable`, and the CPUs this task may use."""

from __future__ import annotations

import os


def cache_root() -> str | None:
    """`[parallel_run] cache_root`; None lets the engine use $AIRFLOW_PARALLEL_RUN_CACHE or
    ~/.cache/airflow-parallel-run."""
    from airflow.sdk.configuration import conf

    value = conf.get("parallel_run", "cache_root", fallback=None)
    return str(value) if value else None


def resolved_cache_root() -> str:
    """The cache root the engine uses (`cache_root`, else the engine's default)."""
    from airflow_parallel_run.core.reuse.cache import resolve_cache_root

    return resolve_cache_root(cache_root())


def default_manifest_dir() -> str:
    """Where a `DatasetPartitionSensor` writes its manifests unless told: beside the cache."""
    return resolved_cache_root() + "/manifests"


def protected_paths() -> list[str]:
    """Folders a job's output may never touch: AIRFLOW_HOME and the DAGs folder (passed to the engine
    as ``protected_paths``)."""
    from airflow.sdk.configuration import conf

    candidates = [
        os.environ.get("AIRFLOW_HOME") or os.path.join("~", "airflow"),
        conf.get("core", "dags_folder", fallback=None),
    ]
    return sorted({os.path.abspath(os.path.expanduser(str(p))) for p in candidates if p})


def default_deferrable() -> bool:
    """`[operators] default_deferrable`, as Airflow's own deferrable operators read it."""
    from airflow.sdk.configuration import conf

    return bool(conf.getboolean("operators", "default_deferrable", fallback=False))


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity), else the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
