"""`ParallelRunPlugin`: the "Parallel run" tab on task instances and the "Parallel runs" page.

Registered through the ``airflow.plugins`` entry point, so `airflow plugins` lists it and the API
server mounts its FastAPI app at ``/parallel-run`` (under `[api] base_url`'s path). The tab is an
external view with ``destination="task_instance"``: Airflow shows it on every task instance, and for a
task that ran no parallel run job it says so. The app is built on first use, so the scheduler,
workers and tasks that load plugins never import FastAPI for it.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/parallel-run"


def _base_path() -> str:
    """The path part of `[api] base_url` (``""`` when Airflow is served at the root)."""
    from airflow.configuration import conf

    base_url = conf.get("api", "base_url", fallback="") or ""
    return urlsplit(base_url).path.rstrip("/") if base_url else ""


def external_views(base: str | None = None) -> list[dict[str, Any]]:
    """The tab (task instances, also mapped ones) and the nav page; the UI fills in ``{DAG_ID}`` etc."""
    prefix = (_base_path() if base is None else base) + URL_PREFIX
    return [
        {
            "name": "Parallel run",
            "href": (
                f"{prefix}/task?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}&map_index={{MAP_INDEX}}"
            ),
            "destination": "task_instance",
            "url_route": "parallel-run",
        },
        {
            "name": "Parallel runs",
            "href": f"{prefix}/runs",
            "destination": "nav",
            "category": "browse",
            "url_route": "parallel-runs",
        },
    ]


class ParallelRunPlugin(AirflowPlugin):
    name = "parallel_run"

    @cached_property
    def external_views(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return external_views()

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from airflow_parallel_run.ui.app import create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Parallel run"}]
