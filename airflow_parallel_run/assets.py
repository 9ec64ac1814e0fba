"""The operator's output as an Airflow asset: the asset URI of an output folder, the outlet a task
declares (an `Asset` for a fixed folder, an `AssetAlias` filled at run time for a templated one or a
map index's), and the rule that map indexes of one task never share an output folder. Events on the
outlets are written by airflow_parallel_run/partitions.py."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias

from airflow_parallel_run.core import ConfigError
from airflow_parallel_run.core.storage import absolute, is_local
from airflow_parallel_run.templating import is_dynamic

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from airflow_parallel_run.task_identity import TaskIdentity

ALIAS_PREFIX = "parallel_run_output:"
#: Each map index of a mapped operator records its output folder here, to find two that share one.
OUTPUT_CLAIM_XCOM_KEY = "parallel_run_output"


def output_asset_uri(output_path: str) -> str:
    """The asset URI of an output folder: ``file:///abs/path`` for local paths, else the URL itself."""
    text = str(output_path).strip()
    if not is_local(text):
        return text.rstrip("/")
    return Path(absolute(text)).as_uri()


def with_output_alias(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`partial()` kwargs plus the AssetAlias outlet the map indexes add their output folders to.

    A mapped operator's outlets are fixed when the DAG is parsed, before any map index renders its
    `output_path`, so each map index's folder can only reach Airflow as an event on an alias.
    """
    if not kwargs.get("declare_output_asset", True) or kwargs.get("output_asset") is not None:
        return kwargs
    from airflow.sdk.definitions._internal.contextmanager import DagContext, TaskGroupContext

    dag = kwargs.get("dag") or DagContext.get_current()
    group = kwargs.get("task_group") or (TaskGroupContext.get_current(dag) if dag else None)
    task_id = group.child_id(kwargs["task_id"]) if group else kwargs["task_id"]
    owner = f"{dag.dag_id}.{task_id}" if dag else task_id
    outlets = kwargs.get("outlets")
    outlets = list(outlets) if isinstance(outlets, (list, tuple)) else ([outlets] if outlets else [])
    return {**kwargs, "outlets": [*outlets, AssetAlias(name=f"{ALIAS_PREFIX}{owner}")]}


def declare_output_asset(
    op: BaseOperator, output_path: Any, given: Asset | None = None
) -> tuple[Asset | None, AssetAlias | None]:
    """Adds the output's outlet to `op`: `given` (``output_asset``), else the alias a map index got
    from `partial`, else an alias for a templated folder or the `Asset` of a fixed one. Returns
    (asset, alias), one of them None."""
    if given is not None:
        op.add_outlets([given])
        return given, None
    for outlet in op.outlets:
        if isinstance(outlet, AssetAlias) and outlet.name.startswith(ALIAS_PREFIX):
            return None, outlet  # a map index of a mapped operator: see `with_output_alias`
    if is_dynamic(output_path):
        owner = f"{op.dag_id}.{op.task_id}" if op.has_dag() else op.task_id
        alias = AssetAlias(name=f"{ALIAS_PREFIX}{owner}")
        op.add_outlets([alias])
        return None, alias
    asset = Asset(uri=output_asset_uri(str(output_path)))
    op.add_outlets([asset])
    return asset, None


def _mapped_operator(op: BaseOperator) -> Any:
    """The DAG's MappedOperator this task instance was unmapped from (None when not mapped)."""
    if not op.has_dag():
        return None
    task = op.dag.task_dict.get(op.task_id)
    return task if hasattr(task, "partial_kwargs") else None


def check_mapped_output(op: BaseOperator, context: Context, identity: TaskIdentity, output_path: str) -> None:
    """Map indexes of one task must not share an output folder: they would overwrite each other's
    output and logs, and asset events would name one folder for different data."""
    partial = getattr(_mapped_operator(op), "partial_kwargs", None) or {}
    if "output_path" in partial and not is_dynamic(partial["output_path"]):
        raise ConfigError(
            "output_path",
            partial["output_path"],
            "a folder per map index for a mapped task (every map index would write to this one): "
            f"template it, e.g. output_path='{str(partial['output_path']).rstrip('/')}/{{{{ ti.map_index }}}}'",
        )
    ti = context["ti"]
    mine = output_asset_uri(output_path)
    ti.xcom_push(key=OUTPUT_CLAIM_XCOM_KEY, value={"map_index": identity.map_index, "output": mine})
    claims = ti.xcom_pull(task_ids=op.task_id, key=OUTPUT_CLAIM_XCOM_KEY)
    claims = claims if isinstance(claims, list) else [claims]
    others = sorted(
        {
            int(claim["map_index"])
            for claim in claims
            if isinstance(claim, Mapping)
            and claim.get("output") == mine
            and claim.get("map_index") != identity.map_index
        }
    )
    if others:
        raise ConfigError(
            "output_path",
            output_path,
            f"a folder per map index for a mapped task: map index {', '.join(map(str, others))} of this "
            "task writes to it too in this run; put {{ ti.map_index }} in the template",
        )
