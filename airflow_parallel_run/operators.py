"""`ParallelRunOperator`: Azure ML ParallelRunStep as an Airflow operator, fanned out on Dask.

The operator is a thin translation layer: it renders its templated arguments, turns them into
engine objects (`ParallelRunConfig`, `FileDataset`/`TabularDataset`), calls
`airflow_parallel_run.core.run_job`, logs progress, and maps the summary to XCom, an asset event
and a task failure. All the work happens in the engine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import Asset, AssetAlias, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

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
from airflow_parallel_run.core.manifest import is_manifest_reference, read_manifest
from airflow_parallel_run.links import DASHBOARD_XCOM_KEY, DaskDashboardLink

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
ERROR_LOG_LINES = 20

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
    with a message naming the field.
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
            return int(number) if number.is_integer() else number
        return text
    if isinstance(value, float) and name in _INT_TUNABLES and value.is_integer():
        return int(value)
    return value


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


class _Finished(Exception):
    """Deferrable mode: the in-cluster job finished before the task deferred."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__("finished")
        self.summary = summary


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


class ParallelRunOperator(BaseOperator):
    """Runs an entry script's ``run(mini_batch)`` over every mini-batch of ``inputs`` on Dask.

    :param parallel_run_config: the `ParallelRunConfig` (entry script, mini-batch size, thresholds, ...).
    :param inputs: a `FileDataset`/`TabularDataset`, a path/glob/URL string (→ `FileDataset.from_files`),
        or a list of them. Templated (also the paths inside datasets).
    :param output_path: output folder (path or fsspec URL). Templated. Declared as an `Asset` outlet.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = _default_deferrable() if deferrable is None else bool(deferrable)
        if not isinstance(parallel_run_config, ParallelRunConfig):
            raise TypeError(
                f"parallel_run_config must be a ParallelRunConfig, not {type(parallel_run_config).__name__}"
            )
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
        self._driver: JobDriver | None = None
        self._validate_static()
        self.output_asset: Asset | None = None
        self.output_asset_alias: AssetAlias | None = None
        if declare_output_asset:
            self._declare_output_asset()

    # -- parse-time checks ------------------------------------------------------------------------
    def _validate_static(self) -> None:
        """Fails at parse time on values that are already known (not templated) and invalid."""
        static = {
            n: coerce_tunable(n, getattr(self, n)) for n in TUNABLES if not _is_dynamic(getattr(self, n))
        }
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

    def _declare_output_asset(self) -> None:
        """A fixed output folder is an `Asset`; a templated one is an `AssetAlias` filled at run time."""
        if _is_dynamic(self.output_path):
            owner = f"{self.dag_id}.{self.task_id}" if self.has_dag() else self.task_id
            self.output_asset_alias = AssetAlias(name=f"parallel_run_output:{owner}")
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

    # -- execution --------------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        self._push_dashboard(context, None)  # the link's XCom always exists, even when the run fails early
        try:
            config = self.resolve_config()
            storage_options = self.resolve_storage_options()
            planned = None
            if is_manifest_reference(self.inputs):  # from DatasetPartitionSensor: run exactly its plan
                inputs, planned = read_manifest(self.inputs["manifest"], storage_options)
                self.log.info(
                    "Running the %d mini-batches of manifest %s",
                    len(planned.mini_batches),
                    self.inputs["manifest"],
                )
            else:
                inputs = self.resolve_inputs(storage_options)
            output_path = self.resolve_output_path()
            side_inputs = _to_strings("side_inputs", self.side_inputs)
            arguments = _to_strings("arguments", self.arguments)
        except ConfigError as exc:
            raise AirflowFailException(f"Invalid ParallelRunOperator setting: {exc}") from exc
        except InputError as exc:
            raise AirflowException(f"Cannot read the inputs: {exc}") from exc
        self.log.info(
            "Parallel run: entry script %s, %d input(s), output %s, mini_batch_size=%s %s, node_count=%s, "
            "process_count_per_node=%s, error_threshold=%s, run_max_try=%s, cluster=%s",
            config.entry_script_path,
            len(inputs),
            output_path,
            config.mini_batch_size_for(tabular=inputs[0].kind == "tabular"),
            "bytes" if inputs[0].kind == "tabular" else "files",
            config.node_count,
            config.processes_per_node,
            config.error_threshold,
            config.run_max_try,
            f"connection {self.dask_conn_id!r}" if self.dask_conn_id else "embedded LocalCluster (127.0.0.1)",
        )
        job_kwargs: dict[str, Any] = {
            "side_inputs": side_inputs,
            "arguments": arguments,
            "storage_options": storage_options,
            "progress": self._log_progress,
            "on_driver": lambda driver: self._set_driver(driver, context),
            "allow_reuse": self.allow_reuse,
            "cache_dir": _cache_root(),
            "planned": planned,
        }
        try:
            with _quiet_task_log():
                summary = self._run(context, config, inputs, output_path, job_kwargs)
        except _Finished as finished:  # deferrable mode, finished before deferring
            return self._remote_summary(context, finished.summary)
        except OutputBusyError as exc:  # another running job holds the folder: a retry may find it free
            raise AirflowException(f"The output folder is busy: {exc}") from exc
        except ConfigError as exc:
            raise AirflowFailException(f"Invalid ParallelRunOperator setting: {exc}") from exc
        except InputError as exc:
            raise AirflowException(f"Cannot read the inputs: {exc}") from exc
        finally:
            self._driver = None
        return self._handle_summary(context, summary)

    def _run(
        self,
        context: Context,
        config: ParallelRunConfig,
        inputs: list[Dataset],
        output_path: str,
        job_kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        """Runs the job on the connection's cluster, or on an embedded LocalCluster without one."""
        if self.deferrable and not self.dask_conn_id:
            self.log.warning(
                "deferrable=True needs a dask_conn_id (an embedded LocalCluster lives in this worker process "
                "and would end with it); running in this worker instead"
            )
        elif self.deferrable:
            self._submit_and_defer(context, config, inputs, output_path, job_kwargs)
        if self.dask_conn_id:
            from airflow_parallel_run.hooks import DaskHook

            hook = DaskHook(self.dask_conn_id)
            with hook.get_client() as client:
                self._push_dashboard(context, hook.dashboard_url or _client_dashboard(client))
                try:
                    placement = select_hosts(
                        client, config.node_count, config.processes_per_node, hook.timeout
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
                return run_job(config, inputs, output_path, client=client, **job_kwargs)
        return run_job(
            config,
            inputs,
            output_path,
            on_client=lambda client: self._push_dashboard(context, _client_dashboard(client)),
            **job_kwargs,
        )

    def _handle_summary(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        self.log.info("Output: %s", summary.get("append_row_file") or summary.get("output"))
        self.log.info("Logs: %s", summary.get("logs_dir"))
        if summary.get("logs_dir"):
            self.log.info(
                "Report: %s/report.html (one page: progress, durations, timeline, resources, errors)",
                summary["logs_dir"],
            )
        if summary.get("status") != "succeeded":
            self._log_error_head(summary)
            context["ti"].xcom_push(key=SUMMARY_XCOM_KEY, value=summary)
            raise AirflowException(summary.get("message") or "Job failed (see logs/job_result.txt)")
        self._emit_asset_event(context, summary)
        return summary

    def _log_progress(self, line: str) -> None:
        self.log.info("%s", line)

    def _set_driver(self, driver: JobDriver, context: Context | None = None) -> None:
        self._driver = driver
        if context is not None:
            self._push_job(context, driver.job_id, driver.output, driver.config)

    def _push_job(self, context: Context, job_id: str, output: str, config: ParallelRunConfig) -> None:
        """The job's record for the UI (XCom `JOB_XCOM_KEY`): locations and the connection that reads
        them, never credentials."""
        import datetime as dt

        output = str(output).strip().removeprefix("file://")
        output = (output if "://" in output else os.path.abspath(os.path.expanduser(output))).rstrip("/")
        append_row = config.output_action == "append_row"
        context["ti"].xcom_push(
            key=JOB_XCOM_KEY,
            value={
                "job_id": job_id,
                "output": output,
                "logs_dir": f"{output}/logs",
                "append_row_file": f"{output}/{config.append_row_file_name}" if append_row else None,
                "storage_conn_id": self.storage_conn_id,
                "started": dt.datetime.now(dt.timezone.utc).isoformat(),
            },
        )

    # -- deferrable mode --------------------------------------------------------------------------
    def _submit_and_defer(
        self,
        context: Context,
        config: ParallelRunConfig,
        inputs: list[Dataset],
        output_path: str,
        job_kwargs: dict[str, Any],
    ) -> None:
        """Starts the driver inside the cluster and defers; a job that is already done returns at once."""
        import time

        from airflow_parallel_run.core.remote import RemoteJob, job_state, submit_job
        from airflow_parallel_run.hooks import DaskHook
        from airflow_parallel_run.triggers import ParallelRunJobTrigger

        assert self.dask_conn_id is not None
        job = RemoteJob.build(
            config,
            inputs,
            output_path,
            side_inputs=job_kwargs["side_inputs"],
            arguments=job_kwargs["arguments"],
            storage_options=job_kwargs["storage_options"],
            allow_reuse=self.allow_reuse,
            cache_dir=job_kwargs["cache_dir"],
            planned=job_kwargs["planned"],
        )
        hook = DaskHook(self.dask_conn_id)
        with hook.get_client() as client:
            self._push_dashboard(context, hook.dashboard_url or _client_dashboard(client))
            submit_job(client, job)
            self._push_job(context, job.job_id, output_path, config)
            self.log.info(
                "Job %s runs inside the Dask cluster; this task defers until it finishes", job.job_id
            )
            time.sleep(2.0)  # a job of cached mini-batches is done by now: no deferral needed
            summary, _ = job_state(client, job.job_id)
        if summary is not None:
            raise _Finished(summary)
        self.defer(
            trigger=ParallelRunJobTrigger(dask_conn_id=self.dask_conn_id, job_id=job.job_id),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resumes after the trigger fired: the summary travels in the event, not in defer kwargs."""
        if not event or event.get("status") != "done":
            raise AirflowException(
                f"The parallel run job did not report back: {(event or {}).get('message')}"
            )
        return self._remote_summary(context, event["summary"])

    def _remote_summary(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        if summary.get("status") == "error":
            raise AirflowException(
                f"The parallel run job could not run in the cluster: {summary.get('message')}"
            )
        return self._handle_summary(context, summary)

    def on_kill(self) -> None:
        """Stops scheduling and kills running entry-script processes (thread-safe engine call)."""
        driver = self._driver
        if driver is not None:
            self.log.info("Cancelling the parallel run job %s", driver.job_id)
            driver.cancel("the Airflow task was killed")

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
        """Attaches the counts to the outlet asset event (the concrete folder for a templated output)."""
        extra = {
            key: summary.get(key)
            for key in ("total_items", "succeeded_items", "failed_items", "append_row_file", "cache_key")
        }
        events = context["outlet_events"]
        if self.output_asset is not None:
            events[self.output_asset].extra.update(extra)
        elif self.output_asset_alias is not None:
            uri = output_asset_uri(str(summary.get("output") or self.resolve_output_path()))
            events[self.output_asset_alias].add(Asset(uri=uri), extra=extra)


def _client_dashboard(client: Any) -> str | None:
    try:
        link = client.dashboard_link
    except Exception:  # noqa: BLE001 - a cluster without a dashboard is fine
        return None
    return str(link) if link else None
