"""`ParallelRunOperator`: Azure ML ParallelRunStep as an Airflow operator, fanned out on Dask.

The operator is a thin translation layer: it renders its templated arguments, turns them into
engine objects (`ParallelRunConfig`, `FileDataset`/`TabularDataset`), calls
`airflow_parallel_run.core.run_job`, logs progress, and maps the summary to XCom, an asset event
and a task failure. All the work happens in the engine.

The task's lifecycle (see docs/airflow.md, "Lifecycle"): on the embedded cluster the job runs in a
thread of the task process, so the main thread stays free for Airflow's signals — a stop from the
UI (`on_kill`) or `execution_timeout` (`AirflowTaskTimeout`) cancels the job, which then writes
`logs/job_result.txt` and removes its staging area before the task ends. In deferrable mode the job
runs inside the Dask cluster under a slot named after the task instance: a new try stops the
previous try's job before it starts its own, and the trigger enforces `execution_timeout`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import Asset, AssetAlias, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout

from airflow_parallel_run.core import (
    ConfigError,
    FileDataset,
    InputError,
    JobDriver,
    OutputBusyError,
    ParallelRunConfig,
    TabularDataset,
    run_job,
)
from airflow_parallel_run.core.cluster import ClusterError, select_hosts
from airflow_parallel_run.core.manifest import InputChangedError, is_manifest_reference, load_manifest
from airflow_parallel_run.core.planner import Plan
from airflow_parallel_run.core.watch_lease import DEFAULT_WATCH_LEASE_S, check_watch_lease
from airflow_parallel_run.lineage import LineageMixin
from airflow_parallel_run.links import DASHBOARD_XCOM_KEY, DaskDashboardLink
from airflow_parallel_run.partitions import (
    check_key_in_paths,
    check_outlet_partitions,
    emit_output_events,
    run_partition_key,
    with_run_partition,
)
from airflow_parallel_run.task_identity import STOPPED_FROM_AIRFLOW, TaskIdentity, stop_reason_for_state

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

#: Config fields that the operator can override per run (the Airflow form of Azure's PipelineParameter).
TUNABLES: tuple[str, ...] = (
    "mini_batch_size",
    "node_count",
    "process_count_per_node",
    "logging_level",
    "run_invocation_timeout",
    "run_max_try",
    "error_threshold",
)
_INT_TUNABLES = frozenset({"node_count", "process_count_per_node", "run_max_try", "error_threshold"})
_INT_RE = re.compile(r"^[+-]?\d+$")
_NONE_STRINGS = frozenset({"", "none", "null"})
SUMMARY_XCOM_KEY = "summary"
#: Pushed when the job starts: where its logs and output are, so the UI's "Parallel run" tab finds them.
JOB_XCOM_KEY = "parallel_run_job"
#: Each map index of a mapped operator records its output folder here, to find two that share one.
OUTPUT_CLAIM_XCOM_KEY = "parallel_run_output"
ERROR_LOG_LINES = 20
#: What to do when a manifest's input files changed after the sensor planned them.
ON_MANIFEST_CHANGE = ("fail", "replan")
#: Entry-script processes per CPU of the embedded cluster's host above which the task log warns.
PROCESSES_PER_CPU_WARNING = 2
#: How long a stopped job (on_kill, execution_timeout) gets to write its result before the task ends.
JOB_STOP_WAIT_S = 90.0
#: How long a new try waits for the previous try's in-cluster job to stop.
SUPERSEDE_WAIT_S = 120.0
#: Added to the remaining `execution_timeout` for Airflow's own trigger timeout: the trigger fires at
#: the deadline itself (after cancelling the job); Airflow's timeout is the backstop if it cannot.
TRIGGER_TIMEOUT_MARGIN_S = 180.0
_ALIAS_PREFIX = "parallel_run_output:"
Dataset = FileDataset | TabularDataset


def _is_dynamic(value: Any) -> bool:
    """True for values only known at run time: Jinja strings and XComArgs (anywhere in a list)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, (list, tuple)):
        return any(_is_dynamic(v) for v in value)
    if isinstance(value, (FileDataset, TabularDataset)):
        return any(_is_dynamic(p) for p in value.paths)
    return callable(getattr(value, "resolve", None)) and not isinstance(value, os.PathLike)


def coerce_tunable(name: str, value: Any) -> Any:
    """Undo string rendering: ``"10"`` → 10 for integer fields, ``"None"``/``""`` → None.

    Jinja renders ``{{ params.x }}`` to a string unless the DAG renders native objects; both forms
    end up as the type `ParallelRunConfig` expects. Anything else is left for the config to reject
    with a message naming the field. ``"nan"``/``"inf"`` stay strings: a non-finite float is not a
    timeout, and it cannot even be stored as a rendered field (JSON has no such numbers).
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _NONE_STRINGS:
            return None
        if name in _INT_TUNABLES or name == "mini_batch_size":
            return int(text) if _INT_RE.match(text) else text
        if name == "run_invocation_timeout":
            try:
                number = float(text)
            except ValueError:
                return text
            if not math.isfinite(number):
                return text
            return int(number) if number.is_integer() else number
        return text
    if isinstance(value, float) and name in _INT_TUNABLES and value.is_integer():
        return int(value)
    return value


def check_tunables(overrides: Mapping[str, Any]) -> None:
    """What `ParallelRunConfig` lets through but a run cannot use: a non-finite timeout."""
    value = overrides.get("run_invocation_timeout")
    number: float | None = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is not None and not math.isfinite(number):
        raise ConfigError("run_invocation_timeout", value, "a finite number of seconds > 0")


def to_datasets(value: Any) -> list[Dataset]:
    """`inputs` as datasets: a dataset, a path/glob/URL string, or a list of them (strings → one FileDataset)."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError("inputs", value, "at least one FileDataset, TabularDataset or path")
    datasets: list[Dataset] = []
    paths: list[str] = []
    paths_at = -1
    for item in items:
        if isinstance(item, (FileDataset, TabularDataset)):
            datasets.append(item)
        elif isinstance(item, (str, os.PathLike)) and str(item).strip():
            if paths_at < 0:
                paths_at = len(datasets)
            paths.append(str(item))
        else:
            raise ConfigError(
                "inputs",
                item,
                "a FileDataset, a TabularDataset, or a path/glob/URL string (or a list of them)",
            )
    if paths:
        datasets.insert(paths_at, FileDataset.from_files(paths))
    return datasets


def _to_strings(name: str, value: Any) -> list[str]:
    """`arguments`/`side_inputs` as a list of strings (numbers from native rendering become strings)."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(name, value, "a list of strings")
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike, int, float)):
            out.append(str(item))
        else:
            raise ConfigError(name, item, "a string (or a number)")
    return out


@contextmanager
def _quiet_task_log() -> Iterator[None]:
    """While the job runs, Dask's start/stop chatter shows only from WARNING."""
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    if dask_logger.getEffectiveLevel() < logging.WARNING:
        dask_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dask_logger.setLevel(level)


def _cache_root() -> str | None:
    """`[parallel_run] cache_root` from the Airflow configuration; None lets the engine use
    $AIRFLOW_PARALLEL_RUN_CACHE or ~/.cache/airflow-parallel-run."""
    from airflow.sdk.configuration import conf

    value = conf.get("parallel_run", "cache_root", fallback=None)
    return str(value) if value else None


def protected_paths() -> list[str]:
    """Folders a job's output may never touch: AIRFLOW_HOME and the DAGs folder (passed to the engine
    as ``protected_paths`` when it takes that option)."""
    from airflow.sdk.configuration import conf

    candidates = [
        os.environ.get("AIRFLOW_HOME") or os.path.join("~", "airflow"),
        conf.get("core", "dags_folder", fallback=None),
    ]
    return sorted({os.path.abspath(os.path.expanduser(str(p))) for p in candidates if p})


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _format_timeout(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


class _Finished(Exception):
    """Deferrable mode: the in-cluster job finished before the task deferred."""

    def __init__(self, summary: dict[str, Any], lines: list[str]) -> None:
        super().__init__("finished")
        self.summary = summary
        self.lines = lines


@dataclasses.dataclass
class _Job:
    """A resolved job: what `run_job` gets (the result of rendering and checking)."""

    config: ParallelRunConfig
    inputs: list[Dataset]
    output_path: str
    planned: Plan | None
    kwargs: dict[str, Any]


def _default_deferrable() -> bool:
    """`[operators] default_deferrable`, as Airflow's own deferrable operators read it."""
    from airflow.sdk.configuration import conf

    return bool(conf.getboolean("operators", "default_deferrable", fallback=False))


def output_asset_uri(output_path: str) -> str:
    """The asset URI of an output folder: ``file:///abs/path`` for local paths, else the URL itself."""
    text = str(output_path).strip()
    if "://" in text and not text.startswith("file://"):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(os.path.abspath(os.path.expanduser(text))).as_uri()


def _with_output_alias(kwargs: dict[str, Any]) -> dict[str, Any]:
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
    return {**kwargs, "outlets": [*outlets, AssetAlias(name=f"{_ALIAS_PREFIX}{owner}")]}


class ParallelRunOperator(LineageMixin, BaseOperator):
    """Runs an entry script's ``run(mini_batch)`` over every mini-batch of ``inputs`` on Dask.

    :param parallel_run_config: the `ParallelRunConfig` (entry script, mini-batch size, thresholds, ...).
    :param inputs: a `FileDataset`/`TabularDataset`, a path/glob/URL string (→ `FileDataset.from_files`),
        a list of them, or a `DatasetPartitionSensor`'s manifest reference. Templated (also the paths
        inside datasets).
    :param output_path: output folder (path or fsspec URL). Templated. Declared as an `Asset` outlet.
        A mapped operator needs one folder per map index (e.g. ``.../{{ ti.map_index }}``).
    :param side_inputs: files/folders every worker gets locally; a side input given in ``arguments`` is
        replaced by its local path. Templated.
    :param arguments: entry-script command-line arguments (``sys.argv``). Templated.
    :param allow_reuse: reuse unchanged mini-batches of earlier runs (passed to the engine).
    :param dask_conn_id: a ``dask`` connection; None ⇒ an embedded LocalCluster on 127.0.0.1.
    :param mini_batch_size: templated override of the config field (likewise ``node_count``,
        ``process_count_per_node``, ``logging_level``, ``run_invocation_timeout``, ``run_max_try``,
        ``error_threshold``); None keeps the config's value. Bind them to DAG Params to get them in
        the trigger form; numeric strings from Jinja are converted back to numbers.
    :param storage_options: fsspec options (credentials) for inputs and output.
    :param storage_conn_id: an Airflow connection holding those options (an ``aws`` connection, or any
        connection with a ``storage_options`` extra); ``storage_options`` wins key by key.
    :param declare_output_asset: declare the output folder as an outlet asset (default True).
    :param output_asset: the outlet `Asset` to announce the output on instead of the output folder's own
        (needed for partition-scheduled consumers when ``output_path`` is templated per partition: they
        schedule on one fixed asset whose events carry partition keys); the event's extra names the
        concrete folder. See airflow_parallel_run/partitions.py.
    :param outlet_partitions: ``"run"`` (default): the outlet event is the run's partition (Airflow's
        default); ``"data"``: one event per scored partition of the input's ``partition_keys``.
    :param on_manifest_change: with a sensor's manifest as ``inputs``: ``"fail"`` (default) when an input
        file was deleted or changed after the sensor planned it, or ``"replan"`` to plan the manifest's
        inputs again as they are now.
    :param watch_lease_s: deferrable mode: the in-cluster job stops itself (``Job failed: no Airflow
        trigger watched the job for 300 s ...``) once no trigger has refreshed its watch mark for this many
        seconds (default 300, at least 10): a task marked failed/success or cleared before its trigger
        ran, or no triggerer running, must not leave a job running for ever. Keep it well above a
        triggerer hand-off (see docs/airflow.md, Lifecycle).
    """

    template_fields: Sequence[str] = ("inputs", "output_path", "side_inputs", "arguments", *TUNABLES)
    template_fields_renderers: ClassVar[dict[str, str]] = {"arguments": "json", "side_inputs": "json"}
    operator_extra_links = (DaskDashboardLink(),)
    ui_color = "#cfe3f7"

    def __init__(
        self,
        *,
        parallel_run_config: ParallelRunConfig,
        inputs: Any,
        output_path: Any,
        side_inputs: Any = None,
        arguments: Any = None,
        allow_reuse: bool = True,
        dask_conn_id: str | None = None,
        mini_batch_size: int | str | None = None,
        node_count: int | str | None = None,
        process_count_per_node: int | str | None = None,
        logging_level: str | None = None,
        run_invocation_timeout: float | str | None = None,
        run_max_try: int | str | None = None,
        error_threshold: int | str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        storage_conn_id: str | None = None,
        declare_output_asset: bool = True,
        deferrable: bool | None = None,
        on_manifest_change: str = "fail",
        output_asset: Asset | None = None,
        outlet_partitions: str = "run",
        watch_lease_s: float = DEFAULT_WATCH_LEASE_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = _default_deferrable() if deferrable is None else bool(deferrable)
        if not isinstance(parallel_run_config, ParallelRunConfig):
            raise TypeError(
                f"parallel_run_config must be a ParallelRunConfig, not {type(parallel_run_config).__name__}"
            )
        if on_manifest_change not in ON_MANIFEST_CHANGE:
            raise ConfigError("on_manifest_change", on_manifest_change, " or ".join(ON_MANIFEST_CHANGE))
        self.parallel_run_config = parallel_run_config
        self.inputs = inputs
        self.output_path = output_path
        self.side_inputs = side_inputs
        self.arguments = arguments
        self.allow_reuse = allow_reuse
        self.dask_conn_id = dask_conn_id
        self.mini_batch_size = mini_batch_size
        self.node_count = node_count
        self.process_count_per_node = process_count_per_node
        self.logging_level = logging_level
        self.run_invocation_timeout = run_invocation_timeout
        self.run_max_try = run_max_try
        self.error_threshold = error_threshold
        self.storage_options = dict(storage_options or {})
        self.storage_conn_id = storage_conn_id
        self.on_manifest_change = on_manifest_change
        self.watch_lease_s = check_watch_lease(watch_lease_s)
        self._driver: JobDriver | None = None
        self._stop_reason: str | None = None  # set once the task must stop (before or while the job runs)
        self._kill_requested = threading.Event()
        self._validate_static()
        self.output_asset: Asset | None = None
        self.output_asset_alias: AssetAlias | None = None
        if declare_output_asset or output_asset is not None:
            self._declare_output_asset(output_asset)
        self.outlet_partitions = outlet_partitions
        check_outlet_partitions(
            outlet_partitions, parallel_run_config.partition_keys, bool(self.output_asset)
        )

    @classmethod
    def from_azure_job(
        cls,
        path: str,
        *,
        output_path: str,
        input_map: Mapping[str, str] | None = None,
        output_map: Mapping[str, str] | None = None,
        job_name: str | None = None,
        **kwargs: Any,
    ) -> ParallelRunOperator:
        """The operator that runs the parallel job of an Azure ML v2 YAML (a parallel job or component, or the
        parallel job of a pipeline job), read when the DAG file is parsed. `input_map` gives the inputs that
        point into Azure (name -> path or fsspec URL), `output_map` the outputs other than ``append_row_to``
        (default: ``<output_path>/<name>``). Keys with no effect here are logged; other keyword arguments go to
        the operator (``task_id`` defaults to the job's name). See docs/azure.md."""
        from airflow_parallel_run.azure.job_yaml import load_azure_job

        job = load_azure_job(
            path, output_path=output_path, input_map=input_map, output_map=output_map, job_name=job_name
        )
        for note in job.notes():
            logging.getLogger(__name__).warning("Azure job %s: %s", job.name, note)
        kwargs.setdefault("task_id", job.name)
        kwargs.setdefault("allow_reuse", job.allow_reuse)
        return cls(
            parallel_run_config=job.config,
            inputs=list(job.inputs),
            output_path=output_path,
            side_inputs=[*job.side_inputs, *(kwargs.pop("side_inputs", None) or [])],
            arguments=[*job.arguments, *(kwargs.pop("arguments", None) or [])],
            **kwargs,
        )

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """`BaseOperator.partial`, plus the AssetAlias outlet every map index adds its folder to."""
        from airflow.sdk.bases import operator as base

        return base.partial(cls, **_with_output_alias(kwargs))

    # -- parse-time checks ------------------------------------------------------------------------
    def _validate_static(self) -> None:
        """Fails at parse time on values that are already known (not templated) and invalid."""
        static = {
            n: coerce_tunable(n, getattr(self, n)) for n in TUNABLES if not _is_dynamic(getattr(self, n))
        }
        check_tunables(static)
        self.parallel_run_config.with_overrides(**static)
        if not _is_dynamic(self.inputs) and not is_manifest_reference(self.inputs):
            to_datasets(self.inputs)
        if not _is_dynamic(self.output_path) and (
            not isinstance(self.output_path, (str, os.PathLike)) or not str(self.output_path).strip()
        ):
            raise ConfigError("output_path", self.output_path, "a folder path or fsspec URL")
        for name in ("side_inputs", "arguments"):
            value = getattr(self, name)
            if not _is_dynamic(value):
                _to_strings(name, value)

    def _declare_output_asset(self, given: Asset | None = None) -> None:
        """A fixed output folder is an `Asset`; a templated one (or a map index's) is an `AssetAlias`
        filled at run time; `given` (``output_asset``) replaces both."""
        if given is not None:
            self.output_asset = given
            self.add_outlets([given])
            return
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias) and outlet.name.startswith(_ALIAS_PREFIX):
                self.output_asset_alias = outlet  # a map index of a mapped operator: see `partial`
                return
        if _is_dynamic(self.output_path):
            owner = f"{self.dag_id}.{self.task_id}" if self.has_dag() else self.task_id
            self.output_asset_alias = AssetAlias(name=f"{_ALIAS_PREFIX}{owner}")
            self.add_outlets([self.output_asset_alias])
        else:
            self.output_asset = Asset(uri=output_asset_uri(str(self.output_path)))
            self.add_outlets([self.output_asset])

    # -- rendering --------------------------------------------------------------------------------
    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: jinja2.Environment | None = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        """Also renders the paths inside `FileDataset`/`TabularDataset` inputs."""
        if isinstance(content, (FileDataset, TabularDataset)):
            paths = super().render_template(list(content.paths), context, jinja_env, seen_oids)
            return dataclasses.replace(content, paths=tuple(str(p) for p in paths))
        return super().render_template(content, context, jinja_env, seen_oids)

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Renders, then coerces tunables back to their types (``"10"`` → 10) whatever the Jinja mode."""
        super().render_template_fields(context, jinja_env)
        for name in TUNABLES:
            setattr(self, name, coerce_tunable(name, getattr(self, name)))

    # -- resolution (after rendering) -------------------------------------------------------------
    def resolve_config(self) -> ParallelRunConfig:
        """The config with the (rendered) tunables applied; `ConfigError` names a bad field."""
        overrides = {name: coerce_tunable(name, getattr(self, name)) for name in TUNABLES}
        check_tunables(overrides)
        return self.parallel_run_config.with_overrides(**overrides)

    def resolve_inputs(self, storage_options: Mapping[str, Any] | None = None) -> list[Dataset]:
        """The datasets; one without its own `storage_options` gets the operator's (credentials)."""
        datasets = to_datasets(self.inputs)
        if not storage_options:
            return datasets
        return [
            d if d.storage_options else dataclasses.replace(d, storage_options=dict(storage_options))
            for d in datasets
        ]

    def resolve_storage_options(self) -> dict[str, Any]:
        """`storage_conn_id`'s options updated by `storage_options` (explicit keys win)."""
        options: dict[str, Any] = {}
        if self.storage_conn_id:
            from airflow_parallel_run.hooks import storage_options_from_connection

            options.update(storage_options_from_connection(self.storage_conn_id))
        options.update(self.storage_options)
        return options

    def resolve_output_path(self) -> str:
        if not isinstance(self.output_path, (str, os.PathLike)) or not str(self.output_path).strip():
            raise ConfigError("output_path", self.output_path, "a folder path or fsspec URL")
        return str(self.output_path).strip()

    def _resolve_manifest(
        self, storage_options: Mapping[str, Any], cache_dir: str | None
    ) -> tuple[list[Dataset], Plan | None]:
        """A sensor's manifest: its datasets and plan, after checking its files against their
        fingerprints (`on_manifest_change` says what a deleted or changed file does)."""
        from airflow_parallel_run.core.cache import Fingerprinter, memo_path, resolve_cache_root
        from airflow_parallel_run.core.manifest import verify_manifest

        manifest = load_manifest(self.inputs["manifest"], storage_options)
        fingerprinter = Fingerprinter(memo_path(resolve_cache_root(cache_dir)), storage_options)
        try:
            verify_manifest(manifest, fingerprinter)
        except InputChangedError as exc:
            if self.on_manifest_change != "replan":
                raise
            self.log.warning("%s", exc)
            self.log.warning(
                "on_manifest_change='replan': planning the manifest's inputs again as they are now "
                "(files that landed after the sensor are included)"
            )
            return manifest.datasets, None
        finally:
            fingerprinter.close()
        self.log.info(
            "Running the %d mini-batches of manifest %s (its %d input files are unchanged)",
            len(manifest.plan.mini_batches),
            manifest.url,
            len(manifest.fingerprints),
        )
        return manifest.datasets, manifest.plan

    def _resolve(self, context: Context, identity: TaskIdentity) -> _Job:
        """Everything the job needs, checked; `ConfigError`/`InputError` say what is wrong."""
        config = self.resolve_config()
        storage_options = self.resolve_storage_options()
        cache_dir = _cache_root()
        planned = None
        if is_manifest_reference(self.inputs):  # from DatasetPartitionSensor: run exactly its plan
            inputs, planned = self._resolve_manifest(storage_options, cache_dir)
        else:
            inputs = self.resolve_inputs(storage_options)
        if planned is None:  # the sensor chose the size of a manifest's mini-batches
            config.mini_batch_size_for(tabular=inputs[0].kind == "tabular")
        output_path = self.resolve_output_path()
        check_key_in_paths(
            run_partition_key(context),
            {"output_path": [output_path], "inputs": [p for d in inputs for p in d.paths]},
        )
        if identity.mapped:
            self._check_mapped_output(context, identity, output_path)
        kwargs: dict[str, Any] = {
            "side_inputs": _to_strings("side_inputs", self.side_inputs),
            "arguments": _to_strings("arguments", self.arguments),
            "storage_options": storage_options,
            "allow_reuse": self.allow_reuse,
            "cache_dir": cache_dir,
            "planned": planned,
        }
        return _Job(config, inputs, output_path, planned, kwargs)

    # -- mapped tasks -----------------------------------------------------------------------------
    def _mapped_operator(self) -> Any:
        """The DAG's MappedOperator this task instance was unmapped from (None when not mapped)."""
        if not self.has_dag():
            return None
        task = self.dag.task_dict.get(self.task_id)
        return task if hasattr(task, "partial_kwargs") else None

    def _check_mapped_output(self, context: Context, identity: TaskIdentity, output_path: str) -> None:
        """Map indexes of one task must not share an output folder: they would overwrite each other's
        output and logs, and asset events would name one folder for different data."""
        mapped = self._mapped_operator()
        partial = getattr(mapped, "partial_kwargs", None) or {}
        if "output_path" in partial and not _is_dynamic(partial["output_path"]):
            raise ConfigError(
                "output_path",
                partial["output_path"],
                "a folder per map index for a mapped task (every map index would write to this one): "
                f"template it, e.g. output_path='{str(partial['output_path']).rstrip('/')}/{{{{ ti.map_index }}}}'",
            )
        ti = context["ti"]
        mine = output_asset_uri(output_path)
        ti.xcom_push(key=OUTPUT_CLAIM_XCOM_KEY, value={"map_index": identity.map_index, "output": mine})
        claims = ti.xcom_pull(task_ids=self.task_id, key=OUTPUT_CLAIM_XCOM_KEY)
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

    # -- execution --------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        self._push_dashboard(context, None)  # the link's XCom always exists, even when the run fails early
        identity = TaskIdentity.from_context(context, self)
        try:
            job = self._resolve(context, identity)
        except InputChangedError as exc:  # retrying cannot bring the planned files back
            raise AirflowFailException(f"Cannot run the planned inputs: {exc}") from exc
        except ConfigError as exc:
            raise AirflowFailException(f"Invalid ParallelRunOperator setting: {exc}") from exc
        except InputError as exc:
            raise AirflowException(f"Cannot read the inputs: {exc}") from exc
        self._log_settings(job)
        extra: dict[str, Any] = {"protected_paths": protected_paths()}  # folders the output may not touch
        try:
            with _quiet_task_log():
                summary = self._run(context, identity, job, extra)
        except _Finished as finished:  # deferrable mode, finished before deferring
            self._replay(finished.lines)
            return self._remote_summary(context, finished.summary)
        except OutputBusyError as exc:  # another job holds the folder now: a retry may find it free
            raise AirflowException(f"The output folder is busy: {exc}") from exc
        except ConfigError as exc:
            raise AirflowFailException(f"Invalid ParallelRunOperator setting: {exc}") from exc
        except InputError as exc:
            raise AirflowException(f"Cannot read the inputs: {exc}") from exc
        except FileNotFoundError as exc:  # an input vanished between planning and fingerprinting
            raise AirflowException(f"Cannot read the inputs: {exc.filename or exc} does not exist") from exc
        finally:
            self._driver = None
        return self._handle_summary(context, summary)

    def _log_settings(self, job: _Job) -> None:
        config, inputs = job.config, job.inputs
        tabular = inputs[0].kind == "tabular"
        size = (
            "planned by the sensor"
            if job.planned is not None
            else f"{config.mini_batch_size_for(tabular=tabular)} {'bytes' if tabular else 'files'}"
        )
        self.log.info(
            "Parallel run: entry script %s, %d input(s), output %s, mini_batch_size=%s, node_count=%s, "
            "process_count_per_node=%s, error_threshold=%s, run_max_try=%s, cluster=%s",
            config.entry_script_path,
            len(inputs),
            job.output_path,
            size,
            config.node_count,
            config.processes_per_node,
            config.error_threshold,
            config.run_max_try,
            f"connection {self.dask_conn_id!r}" if self.dask_conn_id else "embedded LocalCluster (127.0.0.1)",
        )
        cpus = _cpu_count()
        if not self.dask_conn_id and config.processes_per_node > PROCESSES_PER_CPU_WARNING * cpus:
            self.log.warning(
                "process_count_per_node=%d is more than %d x the %d CPU(s) of this host: the embedded "
                "cluster starts %d entry-script processes that compete for them and for memory. Lower it "
                "unless run() mostly waits for I/O, or use a dask_conn_id cluster",
                config.processes_per_node,
                PROCESSES_PER_CPU_WARNING,
                cpus,
                config.processes_per_node,
            )

    def _run(
        self, context: Context, identity: TaskIdentity, job: _Job, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """Runs the job on the connection's cluster, or on an embedded LocalCluster without one."""
        kwargs = {
            **job.kwargs,
            **extra,
            "progress": self._log_progress,
            "on_driver": lambda driver: self._set_driver(driver, context),
        }
        if self.deferrable and not self.dask_conn_id:
            self.log.warning(
                "deferrable=True needs a dask_conn_id (an embedded LocalCluster lives in this worker process "
                "and would end with it); running in this worker instead"
            )
        elif self.deferrable:
            self._submit_and_defer(context, identity, job, extra)
        if self.dask_conn_id:
            from airflow_parallel_run.hooks import DaskHook

            hook = DaskHook(self.dask_conn_id)
            with hook.get_client() as client:
                self._push_dashboard(context, hook.dashboard_url or _client_dashboard(client))
                try:
                    placement = select_hosts(
                        client, job.config.node_count, job.config.processes_per_node, hook.timeout
                    )
                except ClusterError as exc:
                    raise AirflowException(f"Dask connection {self.dask_conn_id!r}: {exc}") from exc
                for warning in placement.warnings:
                    self.log.warning("%s", warning)
                self.log.info(
                    "Dask cluster %s: %d host(s); running on %s (%d entry-script processes at once)",
                    hook.scheduler_address,
                    len(placement.all_hosts),
                    ", ".join(placement.hosts),
                    placement.slots,
                )
                # the engine keeps every mini-batch on the chosen hosts (it selects them the same way)
                return self._run_watched(
                    context,
                    identity,
                    lambda: run_job(job.config, job.inputs, job.output_path, client=client, **kwargs),
                )
        return self._run_watched(
            context,
            identity,
            lambda: run_job(
                job.config,
                job.inputs,
                job.output_path,
                on_client=lambda client: self._push_dashboard(context, _client_dashboard(client)),
                **kwargs,
            ),
        )

    def _run_watched(
        self, context: Context, identity: TaskIdentity, target: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """Runs the job in a thread; this (main) thread keeps Airflow's signals.

        `on_kill` (mark success/failed, clear) and `execution_timeout` (`AirflowTaskTimeout`, raised
        here by SIGALRM) arrive in the main thread at any moment. Were the driver running here, the
        timeout would tear it down mid-loop: no result file, the staging area left behind. Instead
        the job is cancelled and given `JOB_STOP_WAIT_S` to finish its logs and result.
        """
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def body() -> None:
            try:
                outcome["summary"] = target()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc
            finally:
                done.set()

        if self._stop_reason:
            raise AirflowException(f"The task was stopped before the job started: {self._stop_reason}")
        thread = threading.Thread(target=body, name=f"parallel-run-{self.task_id}", daemon=True)
        thread.start()
        try:
            while not done.wait(0.2):
                if self._kill_requested.is_set() and self._stop_reason is None:
                    self._stop(self._airflow_stop_reason(identity))
        except AirflowTaskTimeout as exc:
            limit = self.execution_timeout.total_seconds() if self.execution_timeout else 0.0
            reason = f"execution_timeout={_format_timeout(limit)} exceeded"
            self._stop(reason)
            stopped = done.wait(JOB_STOP_WAIT_S)
            summary = outcome.get("summary")
            if summary is not None:
                self._log_outcome(summary)
            raise AirflowTaskTimeout(self._timeout_message(reason, summary, stopped)) from exc
        if "error" in outcome:
            raise outcome["error"]
        return dict(outcome["summary"])

    def _stop(self, reason: str) -> None:
        """Cancels the job with `reason` (or makes it stop as soon as its driver exists)."""
        self._stop_reason = self._stop_reason or reason
        driver = self._driver
        if driver is not None:
            self.log.info("Stopping the parallel run job %s: %s", driver.job_id, self._stop_reason)
            driver.cancel(self._stop_reason)

    def _airflow_stop_reason(self, identity: TaskIdentity) -> str:
        """Asks Airflow what the user did (the task's new state); bounded, in a helper thread, so a
        slow answer never eats the few seconds Airflow leaves before it kills the task."""
        answer: dict[str, Any] = {}

        def ask() -> None:
            try:
                answer["state"] = identity.current_state()
            except Exception:  # noqa: BLE001 - outside a task runner, or no answer
                answer["unknown"] = True

        asker = threading.Thread(target=ask, name="parallel-run-state", daemon=True)
        asker.start()
        asker.join(timeout=1.0)
        if asker.is_alive() or answer.get("unknown"):
            return STOPPED_FROM_AIRFLOW
        return stop_reason_for_state(answer.get("state"))

    @staticmethod
    def _timeout_message(reason: str, summary: Mapping[str, Any] | None, stopped: bool) -> str:
        if summary is None:
            return f"{reason}: the parallel run job was cancelled" + (
                "" if stopped else f" but had not stopped after {JOB_STOP_WAIT_S:g} s"
            )
        done = summary.get("succeeded_mini_batches", 0)
        return (
            f"{reason}: the parallel run job was stopped with {done} of {summary.get('total_mini_batches')} "
            f"mini-batches committed (a re-run reuses them); see {summary.get('logs_dir')}/job_result.txt"
        )

    def _handle_summary(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        summary = self.job_summary = with_run_partition(summary, context)  # for lineage too
        self._log_outcome(summary)
        if summary.get("status") != "succeeded":
            self._log_error_head(summary)
            context["ti"].xcom_push(key=SUMMARY_XCOM_KEY, value=summary)
            raise AirflowException(summary.get("message") or "Job failed (see logs/job_result.txt)")
        self._emit_asset_event(context, summary)
        return summary

    def _log_outcome(self, summary: Mapping[str, Any]) -> None:
        self.log.info("Output: %s", summary.get("append_row_file") or summary.get("output"))
        self.log.info("Logs: %s", summary.get("logs_dir"))
        if summary.get("logs_dir"):
            self.log.info(
                "Report: %s/report.html (one page: progress, durations, timeline, resources, errors)",
                summary["logs_dir"],
            )

    def _log_progress(self, line: str) -> None:
        self.log.info("%s", line)

    def _replay(self, lines: Sequence[str]) -> None:
        """The in-cluster job's progress lines, as the embedded path logs them (reuse line, result line)."""
        for line in lines:
            self.log.info("%s", line)

    def _set_driver(self, driver: JobDriver, context: Context | None = None) -> None:
        self._driver = driver
        if context is not None:
            self._push_job(context, driver.job_id, driver.output, driver.config)
        if self._stop_reason:  # stopped while the job was being planned
            driver.cancel(self._stop_reason)

    def _push_job(self, context: Context, job_id: str, output: str, config: ParallelRunConfig) -> None:
        """The job's record for the UI (XCom `JOB_XCOM_KEY`): locations and the connection that reads
        them, never credentials."""
        output = str(output).strip().removeprefix("file://")
        output = (output if "://" in output else os.path.abspath(os.path.expanduser(output))).rstrip("/")
        append_row = config.output_action == "append_row"
        context["ti"].xcom_push(
            key=JOB_XCOM_KEY,
            value={
                "job_id": job_id,
                "output": output,
                "logs_dir": f"{output}/logs",
                "append_row_file": f"{output}/{config.output_file_name}" if append_row else None,
                "storage_conn_id": self.storage_conn_id,
                "started": dt.datetime.now(dt.timezone.utc).isoformat(),
            },
        )

    # -- deferrable mode --------------------------------------------------------------------------
    def _submit_and_defer(
        self, context: Context, identity: TaskIdentity, job: _Job, extra: Mapping[str, Any]
    ) -> None:
        """Starts the driver inside the cluster and defers; a job that is already done returns at once.

        The job takes the task instance's slot: a job an earlier try left running (the task was
        cleared, or retried after its worker died) is stopped first, so both never share the folder.
        """
        from airflow_parallel_run.core.remote import (
            RemoteJob,
            cancel_job,
            job_lines,
            job_state,
            submit_job,
        )
        from airflow_parallel_run.hooks import DaskHook
        from airflow_parallel_run.triggers import ParallelRunJobTrigger

        assert self.dask_conn_id is not None
        remote = RemoteJob.build(
            job.config,
            job.inputs,
            job.output_path,
            side_inputs=job.kwargs["side_inputs"],
            arguments=job.kwargs["arguments"],
            storage_options=job.kwargs["storage_options"],
            allow_reuse=self.allow_reuse,
            cache_dir=job.kwargs["cache_dir"],
            planned=job.planned,
            protected_paths=extra.get("protected_paths", ()),
            watch_lease_s=self.watch_lease_s,
        )
        deadline, label = self._deadline(context)
        hook = DaskHook(self.dask_conn_id)
        with hook.get_client() as client:
            self._push_dashboard(context, hook.dashboard_url or _client_dashboard(client))
            self._supersede(client, identity)
            submit_job(client, remote, identity.key)
            self._push_job(context, remote.job_id, job.output_path, job.config)
            try:
                self.log.info(
                    "Job %s runs inside the Dask cluster; this task defers until it finishes", remote.job_id
                )
                if self._kill_requested.wait(2.0):  # stopped from Airflow before deferring
                    reason = self._airflow_stop_reason(identity)
                    cancel_job(client, remote.job_id, reason)
                    raise AirflowException(f"The task was stopped before it deferred: {reason}")
                # a job of cached mini-batches is done by now: no deferral needed
                summary, _ = job_state(client, remote.job_id)
                lines = job_lines(client, remote.job_id)
            except BaseException:  # execution_timeout or a kill before deferring: do not leave it running
                cancel_job(
                    client, remote.job_id, self._stop_reason or "the Airflow task stopped before it deferred"
                )
                raise
        if summary is not None:
            raise _Finished(summary, lines)
        remaining = None if deadline is None else deadline - time.time()
        self.defer(
            trigger=ParallelRunJobTrigger(
                dask_conn_id=self.dask_conn_id,
                job_id=remote.job_id,
                deadline=deadline,
                timeout_label=label,
                identity=identity.as_dict(),
                cluster=hook.cluster_options(),
                watch_lease_s=self.watch_lease_s,
            ),
            method_name="execute_complete",
            timeout=None
            if remaining is None
            else dt.timedelta(seconds=max(remaining, 0.0) + TRIGGER_TIMEOUT_MARGIN_S),
        )

    def _deadline(self, context: Context) -> tuple[float | None, str | None]:
        """When `execution_timeout` ends (epoch seconds) counted from this try's start, and its label."""
        if not self.execution_timeout:
            return None, None
        limit = self.execution_timeout.total_seconds()
        start = getattr(context.get("ti"), "start_date", None)
        started = start.timestamp() if isinstance(start, dt.datetime) else time.time()
        return started + limit, f"execution_timeout={_format_timeout(limit)}"

    def _supersede(self, client: Any, identity: TaskIdentity) -> None:
        """Stops the job a previous try of this task instance left running and waits for its end."""
        from airflow_parallel_run.core.remote import cancel_job, job_state, previous_job, wait_for_end

        previous = previous_job(client, identity.key)
        if previous is None or job_state(client, previous)[0] is not None:
            return
        self.log.info(
            "Job %s of a previous try of %s is still running in the cluster: stopping it before this try "
            "starts its own",
            previous,
            identity,
        )
        cancel_job(client, previous, "superseded by a new try of the Airflow task (cleared or retried)")
        summary = wait_for_end(client, previous, SUPERSEDE_WAIT_S)
        if summary is None and job_state(client, previous)[0] is None:
            self.log.warning(
                "Job %s did not report an end within %g s (its Dask worker may be gone); starting this try's job",
                previous,
                SUPERSEDE_WAIT_S,
            )
            return
        self.log.info(
            "Job %s stopped: %s", previous, (summary or {}).get("message") or (summary or {}).get("status")
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resumes after the trigger fired: the summary travels in the event, not in defer kwargs."""
        event = event or {}
        self._replay(event.get("lines") or [])
        if event.get("status") == "timeout":
            summary = event.get("summary")
            if summary is not None:
                self._log_outcome(summary)
                if summary.get("status") != "succeeded":
                    context["ti"].xcom_push(key=SUMMARY_XCOM_KEY, value=summary)
            raise AirflowTaskTimeout(
                self._timeout_message(str(event.get("message")), summary, summary is not None)
            )
        if event.get("status") != "done":
            raise AirflowException(f"The parallel run job did not report back: {event.get('message')}")
        return self._remote_summary(context, event["summary"])

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Airflow's own trigger timeout (the backstop when the trigger could not fire at the deadline):
        the in-cluster job is cancelled before the task fails."""
        from airflow.sdk.exceptions import TaskDeferralTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout:
            self._cancel_slot_job(context, "the trigger timed out (execution_timeout)")
            raise

    def _cancel_slot_job(self, context: Context, reason: str) -> None:
        from airflow_parallel_run.core.remote import cancel_job, previous_job
        from airflow_parallel_run.hooks import DaskHook

        if not self.dask_conn_id:
            return
        identity = TaskIdentity.from_context(context, self)
        try:
            with DaskHook(self.dask_conn_id).get_client() as client:
                job_id = previous_job(client, identity.key)
                if job_id is not None and cancel_job(client, job_id, reason):
                    self.log.info("Asked the cluster to stop job %s: %s", job_id, reason)
        except Exception as exc:  # noqa: BLE001 - the task fails anyway; say why the job may still run
            self.log.warning("Could not cancel the in-cluster job of %s: %s", identity, exc)

    def _remote_summary(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        if summary.get("status") == "error":
            message = f"The parallel run job could not run in the cluster: {summary.get('message')}"
            if summary.get("error_type") == "ConfigError":  # as in the embedded path: never retried
                raise AirflowFailException(f"Invalid ParallelRunOperator setting: {summary.get('message')}")
            raise AirflowException(message)
        return self._handle_summary(context, summary)

    def on_kill(self) -> None:
        """Airflow stops the task (mark success/failed, clear; SIGTERM from the supervisor).

        Runs in the main thread's signal handler: it only flags the stop. The main thread, waiting
        for the job thread, asks Airflow what the user did and cancels the job with those words;
        before the job exists, the flag keeps it from starting.
        """
        self._kill_requested.set()
        if self._driver is None and self._stop_reason is None:
            self._stop_reason = STOPPED_FROM_AIRFLOW

    def _push_dashboard(self, context: Context, url: str | None) -> None:
        """Stores the dashboard URL for `DaskDashboardLink` ("" when the cluster has none)."""
        if url:
            self.log.info("Dask dashboard: %s", url)
        context["ti"].xcom_push(key=DASHBOARD_XCOM_KEY, value=url or "")

    def _log_error_head(self, summary: Mapping[str, Any]) -> None:
        logs_dir = summary.get("logs_dir")
        if not logs_dir:
            return
        error_file = f"{str(logs_dir).rstrip('/')}/user/error.txt"
        try:
            import fsspec

            with fsspec.open(error_file, "r", encoding="utf-8", **self.storage_options) as handle:
                lines = [line.rstrip("\n") for _, line in zip(range(ERROR_LOG_LINES), handle, strict=False)]
        except (OSError, ValueError) as exc:
            self.log.warning("Could not read %s: %s", error_file, exc)
            return
        if lines:
            self.log.error("First lines of %s:\n%s", error_file, "\n".join(lines))

    def _emit_asset_event(self, context: Context, summary: Mapping[str, Any]) -> None:
        """Attaches the counts to the outlet asset event(s): see airflow_parallel_run/partitions.py."""
        emit_output_events(self, context, summary)


def _client_dashboard(client: Any) -> str | None:
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001 - a cluster without a dashboard is fine
        return None
    return str(link) if link else None
