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
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import Asset, AssetAlias, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout

from airflow_parallel_run import airflow_config, assets
from airflow_parallel_run.assets import (
    check_mapped_output,
    output_asset_uri,
    with_output_alias,
)
from airflow_parallel_run.core import (
    ConfigError,
    InputError,
    JobDriver,
    OutputBusyError,
    ParallelRunConfig,
    run_job,
)
from airflow_parallel_run.core.driver.allocator import own_process
from airflow_parallel_run.core.driver.cluster import ClusterError, dashboard_link, select_hosts
from airflow_parallel_run.core.driver.job import JobRequest
from airflow_parallel_run.core.driver.watch_lease import DEFAULT_WATCH_LEASE_S, check_watch_lease
from airflow_parallel_run.core.inputs.normalise import as_strings, to_datasets, with_job_credentials
from airflow_parallel_run.core.inputs.source import Dataset, InputSource
from airflow_parallel_run.core.logs.joblogs import error_head
from airflow_parallel_run.core.plan import Plan
from airflow_parallel_run.core.plan.manifest import InputChangedError, is_manifest_reference, load_manifest
from airflow_parallel_run.core.reuse.rerun import PreviousJob, rerun_switch
from airflow_parallel_run.core.storage import absolute
from airflow_parallel_run.core.summary import JobSummary
from airflow_parallel_run.deferral import (
    Finished,
    cancel_slot_job,
    check_remote_summary,
    submit_and_defer,
)
from airflow_parallel_run.lineage import LineageMixin
from airflow_parallel_run.links import DASHBOARD_XCOM_KEY, JOB_XCOM_KEY, SUMMARY_XCOM_KEY, DaskDashboardLink
from airflow_parallel_run.partitions import (
    check_key_in_paths,
    check_outlet_partitions,
    emit_output_events,
    run_partition_key,
    with_run_partition,
)
from airflow_parallel_run.task_identity import TaskIdentity
from airflow_parallel_run.task_run import WatchedRun, quiet_task_log, timeout_message
from airflow_parallel_run.templating import TUNABLES, check_static, coerce_tunable, overrides, render_source

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context

__all__ = [
    "JOB_XCOM_KEY",
    "SUMMARY_XCOM_KEY",
    "TUNABLES",
    "ParallelRunOperator",
    "coerce_tunable",
    "output_asset_uri",
]

ERROR_LOG_LINES = 20
#: What to do when a manifest's input files changed after the sensor planned them.
ON_MANIFEST_CHANGE = ("fail", "replan")
#: Entry-script processes per CPU of the embedded cluster's host above which the task log warns.
PROCESSES_PER_CPU_WARNING = 2


def _run_kwargs(request: JobRequest) -> dict[str, Any]:
    """What `run_job` takes of a request besides its config, inputs and output folder."""
    return {
        "side_inputs": request.side_inputs,
        "arguments": request.arguments,
        "storage_options": request.storage_options,
        "allow_reuse": request.allow_reuse,
        "cache_dir": request.cache_dir,
        "planned": request.planned,
        "protected_paths": request.protected_paths,
        "rerun": request.rerun,
    }


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
        ``process_count_per_node``, ``max_concurrency_per_process``, ``logging_level``,
        ``run_invocation_timeout``, ``run_max_try``, ``error_threshold``, ``batch_format``,
        ``progress_update_timeout``,
        ``first_task_creation_timeout``, ``speculative_execution``, ``speculation_multiplier``); None keeps
        the config's value. Bind them to DAG Params to get them in
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
    :param rerun_failed: run only the items that failed in the job that last wrote ``output_path`` (its
        ``logs/sys/job_report/failed_items.jsonl``), with the previous successes from the reuse cache, so the
        output ends with every item once, in order; refused (without retries) when nothing failed there or
        the script, settings or inputs changed since. Templated (``"{{ params.rerun_failed }}"``: a trigger
        form switch); ``"true"``/``"false"`` strings are read as booleans.
    :param watch_lease_s: deferrable mode: the in-cluster job stops itself (``Job failed: no Airflow
        trigger watched the job for 300 s ...``) once no trigger has refreshed its watch mark for this many
        seconds (default 300, at least 10): a task marked failed/success or cleared before its trigger
        ran, or no triggerer running, must not leave a job running for ever. Keep it well above a
        triggerer hand-off (see docs/airflow.md, Lifecycle).
    """

    template_fields: Sequence[str] = (
        "inputs",
        "output_path",
        "side_inputs",
        "arguments",
        *TUNABLES,
        "rerun_failed",
    )
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
        max_concurrency_per_process: int | str | None = None,
        logging_level: str | None = None,
        run_invocation_timeout: float | str | None = None,
        run_max_try: int | str | None = None,
        error_threshold: int | str | None = None,
        batch_format: str | None = None,
        progress_update_timeout: float | str | None = None,
        first_task_creation_timeout: float | str | None = None,
        speculative_execution: bool | str | None = None,
        speculation_multiplier: float | str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        storage_conn_id: str | None = None,
        declare_output_asset: bool = True,
        deferrable: bool | None = None,
        on_manifest_change: str = "fail",
        output_asset: Asset | None = None,
        outlet_partitions: str = "run",
        watch_lease_s: float = DEFAULT_WATCH_LEASE_S,
        rerun_failed: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.deferrable = airflow_config.default_deferrable() if deferrable is None else bool(deferrable)
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
        self.max_concurrency_per_process = max_concurrency_per_process
        self.logging_level = logging_level
        self.run_invocation_timeout = run_invocation_timeout
        self.run_max_try = run_max_try
        self.error_threshold = error_threshold
        self.batch_format = batch_format
        self.progress_update_timeout = progress_update_timeout
        self.first_task_creation_timeout = first_task_creation_timeout
        self.speculative_execution = speculative_execution
        self.speculation_multiplier = speculation_multiplier
        self.storage_options = dict(storage_options or {})
        self.storage_conn_id = storage_conn_id
        self.on_manifest_change = on_manifest_change
        self.watch_lease_s = check_watch_lease(watch_lease_s)
        self.rerun_failed = rerun_failed
        if "{{" not in str(rerun_failed):
            rerun_switch(rerun_failed)  # a literal bad value fails the DAG file at parse time
        self._watch = WatchedRun(self.log)  # the job's driver and how it stops (on_kill, timeout)
        check_static(
            parallel_run_config,
            {name: getattr(self, name) for name in TUNABLES},
            inputs,
            output_path,
            {"side_inputs": side_inputs, "arguments": arguments},
        )
        self.output_asset: Asset | None = None
        self.output_asset_alias: AssetAlias | None = None
        if declare_output_asset or output_asset is not None:
            self.output_asset, self.output_asset_alias = assets.declare_output_asset(
                self, output_path, output_asset
            )
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

        return base.partial(cls, **with_output_alias(kwargs))

    # -- rendering --------------------------------------------------------------------------------
    def render_template(
        self,
        content: Any,
        context: Context,
        jinja_env: jinja2.Environment | None = None,
        seen_oids: set[int] | None = None,
    ) -> Any:
        """Also renders the fields an input source declares in `template_fields` (a dataset's paths)."""
        if isinstance(content, InputSource):
            parent = super().render_template
            return render_source(content, lambda value: parent(value, context, jinja_env, seen_oids))
        return super().render_template(content, context, jinja_env, seen_oids)

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        """Renders, then coerces tunables back to their types (``"10"`` → 10) whatever the Jinja mode."""
        super().render_template_fields(context, jinja_env)
        for name in TUNABLES:
            setattr(self, name, coerce_tunable(name, getattr(self, name)))

    # -- resolution (after rendering) -------------------------------------------------------------
    def resolve_config(self) -> ParallelRunConfig:
        """The config with the (rendered) tunables applied; `ConfigError` names a bad field."""
        return self.parallel_run_config.with_overrides(**overrides({n: getattr(self, n) for n in TUNABLES}))

    def resolve_inputs(self, storage_options: Mapping[str, Any] | None = None) -> list[Dataset]:
        """The datasets; one without its own `storage_options` gets the operator's (credentials)."""
        from airflow_parallel_run.hooks import connection_info

        return with_job_credentials(to_datasets(self.inputs), storage_options, connection_info)

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
        from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter
        from airflow_parallel_run.core.plan.manifest import verify_manifest
        from airflow_parallel_run.core.reuse.cache import memo_path, resolve_cache_root
        from airflow_parallel_run.hooks import connection_info

        manifest = load_manifest(self.inputs["manifest"], storage_options)
        # a manifest keeps no credentials: its sources get the task's (and their connections)
        manifest = dataclasses.replace(
            manifest, datasets=with_job_credentials(manifest.datasets, storage_options, connection_info)
        )
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

    def _resolve(self, context: Context, identity: TaskIdentity) -> JobRequest:
        """Everything the job needs, checked; `ConfigError`/`InputError` say what is wrong."""
        config = self.resolve_config()
        storage_options = self.resolve_storage_options()
        cache_dir = airflow_config.cache_root()
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
            {"output_path": [output_path], "inputs": [p for d in inputs for p in d.locations()]},
        )
        if identity.mapped:
            check_mapped_output(self, context, identity, output_path)
        rerun = None
        if rerun_switch(self.rerun_failed):  # the job that wrote output_path, only its failed items
            rerun = PreviousJob.load(output_path, storage_options)
            planned = rerun.plan
        return JobRequest(
            config,
            tuple(inputs),
            output_path,
            side_inputs=tuple(as_strings("side_inputs", self.side_inputs)),
            arguments=tuple(as_strings("arguments", self.arguments)),
            storage_options=storage_options,
            allow_reuse=self.allow_reuse or rerun is not None,  # a re-run takes the successes from the cache
            cache_dir=cache_dir,
            planned=planned,
            protected_paths=tuple(airflow_config.protected_paths()),  # folders the output may not touch
            rerun=rerun,
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
        try:
            with quiet_task_log():
                summary = self._run(context, identity, job)
        except Finished as finished:  # deferrable mode, finished before deferring
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
            self._watch.driver = None
        return self._handle_summary(context, summary)

    def _log_settings(self, job: JobRequest) -> None:
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
        cpus = airflow_config.cpu_count()
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

    def _run(self, context: Context, identity: TaskIdentity, job: JobRequest) -> dict[str, Any]:
        """Runs the job on the connection's cluster, or on an embedded LocalCluster without one."""
        kwargs = {
            **_run_kwargs(job),
            "progress": self._log_progress,
            "on_driver": lambda driver: self._set_driver(driver, context),
        }
        if self.deferrable and not self.dask_conn_id:
            self.log.warning(
                "deferrable=True needs a dask_conn_id (an embedded LocalCluster lives in this worker process "
                "and would end with it); running in this worker instead"
            )
        elif self.deferrable:
            submit_and_defer(
                self,
                context,
                identity,
                job,
                self._watch,
                on_dashboard=lambda url: self._push_dashboard(context, url),
                on_submitted=lambda job_id: self._push_job(context, job_id, job.output_path, job.config),
            )
        if self.dask_conn_id:
            return self._run_on_connection(context, identity, job, kwargs)
        return self._run_watched(
            identity,
            lambda: run_job(
                job.config,
                job.inputs,
                job.output_path,
                on_client=lambda client: self._push_dashboard(context, dashboard_link(client)),
                **kwargs,
            ),
        )

    def _run_on_connection(
        self, context: Context, identity: TaskIdentity, job: JobRequest, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The job on the cluster of `dask_conn_id`, on the hosts the engine will choose too."""
        from airflow_parallel_run.hooks import DaskHook

        assert self.dask_conn_id is not None
        hook = DaskHook(self.dask_conn_id)
        with hook.get_client() as client:
            self._push_dashboard(context, hook.dashboard_url or dashboard_link(client))
            try:
                placement = select_hosts(
                    client,
                    job.config.node_count,
                    job.config.processes_per_node,
                    hook.timeout,
                    concurrency=job.config.max_concurrency_per_process,
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
                identity, lambda: run_job(job.config, job.inputs, job.output_path, client=client, **kwargs)
            )

    def _run_watched(self, identity: TaskIdentity, target: Any) -> dict[str, Any]:
        """The job in a thread; this (main) thread keeps Airflow's signals (airflow_parallel_run/task_run.py).
        The driver runs in this task's process, which ends after it (core/driver/allocator.py)."""
        own_process()
        return self._watch.run(
            identity, target, self.execution_timeout, self._log_outcome, name=f"parallel-run-{self.task_id}"
        )

    @property
    def _driver(self) -> JobDriver | None:
        """The running job's driver (None before it exists and after the job)."""
        return self._watch.driver

    def _handle_summary(self, context: Context, document: dict[str, Any]) -> dict[str, Any]:
        """The job's summary document (with the run's partition key, if any): logged, returned (the XCom
        value) when the job succeeded, else pushed under `SUMMARY_XCOM_KEY` and the task fails with its
        message."""
        document = self.job_summary = with_run_partition(document, context)  # for lineage too
        summary = JobSummary.from_dict(document)
        self._log_outcome(summary)
        if not summary.succeeded:
            self._log_error_head(summary)
            context["ti"].xcom_push(key=SUMMARY_XCOM_KEY, value=document)
            raise AirflowException(summary.message or "Job failed (see logs/job_result.txt)")
        self._emit_asset_event(context, document)
        return document

    def _log_outcome(self, summary: JobSummary) -> None:
        self.log.info("Output: %s", summary.append_row_file or summary.output or None)
        self.log.info("Logs: %s", summary.logs_dir or None)
        if summary.logs_dir:
            self.log.info(
                "Report: %s/report.html (one page: progress, durations, timeline, resources, errors)",
                summary.logs_dir,
            )

    def _log_progress(self, line: str) -> None:
        self.log.info("%s", line)

    def _replay(self, lines: Sequence[str]) -> None:
        """The in-cluster job's progress lines, as the embedded path logs them (reuse line, result line)."""
        for line in lines:
            self.log.info("%s", line)

    def _set_driver(self, driver: JobDriver, context: Context | None = None) -> None:
        if context is not None:
            self._push_job(context, driver.job_id, driver.output, driver.config)
        self._watch.set_driver(driver)

    def _push_job(self, context: Context, job_id: str, output: str, config: ParallelRunConfig) -> None:
        """The job's record for the UI (XCom `JOB_XCOM_KEY`): locations and the connection that reads
        them, never credentials."""
        output = absolute(str(output).strip())
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

    # -- deferrable mode (airflow_parallel_run/deferral.py) ----------------------------------------
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resumes after the trigger fired: the summary travels in the event, not in defer kwargs."""
        event = event or {}
        self._replay(event.get("lines") or [])
        if event.get("status") == "timeout":
            document = event.get("summary")
            summary = JobSummary.from_dict(document) if document is not None else None
            if summary is not None:
                self._log_outcome(summary)
                if not summary.succeeded:
                    context["ti"].xcom_push(key=SUMMARY_XCOM_KEY, value=document)
            raise AirflowTaskTimeout(timeout_message(str(event.get("message")), summary, summary is not None))
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
            identity = TaskIdentity.from_context(context, self)
            cancel_slot_job(
                self.dask_conn_id, identity, "the trigger timed out (execution_timeout)", self.log
            )
            raise

    def _remote_summary(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        check_remote_summary(summary)
        return self._handle_summary(context, summary)

    def on_kill(self) -> None:
        """Airflow stops the task (mark success/failed, clear; SIGTERM from the supervisor). Runs in the
        main thread's signal handler: it only flags the stop (airflow_parallel_run/task_run.py)."""
        self._watch.on_kill()

    def _push_dashboard(self, context: Context, url: str | None) -> None:
        """Stores the dashboard URL for `DaskDashboardLink` ("" when the cluster has none)."""
        if url:
            self.log.info("Dask dashboard: %s", url)
        context["ti"].xcom_push(key=DASHBOARD_XCOM_KEY, value=url or "")

    def _log_error_head(self, summary: JobSummary) -> None:
        if not summary.logs_dir:
            return
        try:
            error_file, lines = error_head(summary.logs_dir, ERROR_LOG_LINES, self.storage_options)
        except (OSError, ValueError) as exc:
            self.log.warning("Could not read %s/user/error.txt: %s", str(summary.logs_dir).rstrip("/"), exc)
            return
        if lines:
            self.log.error("First lines of %s:\n%s", error_file, "\n".join(lines))

    def _emit_asset_event(self, context: Context, summary: Mapping[str, Any]) -> None:
        """Attaches the counts to the outlet asset event(s): see airflow_parallel_run/partitions.py."""
        emit_output_events(self, context, summary)
