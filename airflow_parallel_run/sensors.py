"""`DatasetPartitionSensor`: wait until a (dated) partition is present and complete, then plan it once.

It writes a manifest (the planned mini-batches plus input fingerprints) and returns a small
reference through XCom; `ParallelRunOperator(inputs=sensor.output)` then runs exactly those
mini-batches, even if more files arrive later.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import fsspec
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_parallel_run.airflow_config import default_manifest_dir, resolved_cache_root
from airflow_parallel_run.core import ConfigError, InputError
from airflow_parallel_run.core.inputs import dataset_to_dict
from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter
from airflow_parallel_run.core.inputs.normalise import to_datasets, with_job_credentials
from airflow_parallel_run.core.inputs.source import Dataset
from airflow_parallel_run.core.plan import plan_inputs
from airflow_parallel_run.core.plan.completeness import Completeness, check_partition
from airflow_parallel_run.core.plan.manifest import fingerprint_plan, write_manifest
from airflow_parallel_run.core.reuse.cache import memo_path
from airflow_parallel_run.core.storage import write_atomic
from airflow_parallel_run.task_identity import TaskIdentity

if TYPE_CHECKING:
    from airflow.sdk import Context


class DatasetPartitionSensor(BaseSensorOperator):
    """Waits for `input` to be complete, plans its mini-batches, returns a manifest reference.

    :param input: a `FileDataset`/`TabularDataset` or a path/glob/URL string (templated, e.g.
        ``"/data/images/{{ ds }}/"``).
    :param mini_batch_size: files (file input) or bytes (tabular) per mini-batch, as in the config.
    :param partition_keys: one mini-batch per distinct key combination.
    :param marker_file: complete when this file (e.g. ``_SUCCESS``) exists in the input folder; or
    :param min_file_count: complete when at least this many files are listed; or
    :param stable_pokes: complete when file names and sizes are unchanged for this many pokes.
    :param manifest_dir: where manifests go (templated); default ``<cache root>/manifests``.
    :param storage_options: fsspec options (credentials) for the input and the manifest.
    :param deferrable: wait in the triggerer instead of a worker slot.
    """

    template_fields: Sequence[str] = ("input", "manifest_dir", "mini_batch_size")
    ui_color = "#e8f0d8"

    def __init__(
        self,
        *,
        input: Any,  # noqa: A002 - the name users know from the design
        mini_batch_size: int | str | None = None,
        partition_keys: Sequence[str] | None = None,
        marker_file: str | None = None,
        min_file_count: int | None = None,
        stable_pokes: int | None = None,
        manifest_dir: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input = input
        self.mini_batch_size = mini_batch_size
        self.partition_keys = list(partition_keys) if partition_keys else None
        self.completeness = Completeness(marker_file, min_file_count, stable_pokes)
        self.manifest_dir = manifest_dir
        self.storage_options = dict(storage_options or {})
        self.deferrable = deferrable

    # -- helpers ----------------------------------------------------------------------------------
    def _datasets(self) -> list[Dataset]:
        from airflow_parallel_run.hooks import connection_info

        try:
            datasets = to_datasets(self.input)
        except ConfigError as exc:
            raise AirflowFailException(f"Invalid DatasetPartitionSensor input: {exc}") from exc
        return with_job_credentials(datasets, self.storage_options, connection_info, mode="merge")

    def _manifest_base(self, context: Context) -> str:
        """The manifest and the stable-pokes state of this task instance (map index included)."""
        return TaskIdentity.from_context(context, self).path_base(self.manifest_dir or default_manifest_dir())

    def _load_state(self, base: str) -> dict[str, Any]:
        try:
            with fsspec.open(base + ".state.json", "rb", **self.storage_options) as handle:
                return dict(json.loads(handle.read()))
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return {}

    def _check(self, context: Context) -> bool:
        """One poke; the stable-size rule keeps its state next to the manifest (works in reschedule mode)."""
        base = self._manifest_base(context)
        try:
            complete, state, seen = check_partition(
                self._datasets(), self.completeness, self._load_state(base)
            )
        except InputError as exc:
            raise AirflowFailException(f"Cannot watch the input: {exc}") from exc
        self.log.info("%s", seen)
        if self.completeness.stable_pokes:
            write_atomic(base + ".state.json", json.dumps(state).encode(), self.storage_options)
        return complete

    def _finish(self, context: Context) -> dict[str, Any]:
        """Plans the complete partition once and writes its manifest; returns the XCom reference."""
        datasets = self._datasets()
        try:
            planned = plan_inputs(datasets, self.mini_batch_size, self.partition_keys)
        except (ConfigError, InputError) as exc:
            raise AirflowFailException(f"Cannot plan the input: {exc}") from exc
        fingerprinter = Fingerprinter(memo_path(resolved_cache_root()), self.storage_options)
        try:  # every file, tabular ones too: the operator checks them before it runs the plan
            fingerprints = fingerprint_plan(planned, datasets, fingerprinter)
        except (OSError, InputError) as exc:
            raise AirflowException(f"Cannot fingerprint the planned input: {exc}") from exc
        finally:
            fingerprinter.close()
        reference = write_manifest(
            self._manifest_base(context) + ".json", datasets, planned, fingerprints, self.storage_options
        )
        self.log.info(
            "Planned %d mini-batches (%d items, %d files, %d bytes); manifest %s",
            reference["mini_batches"],
            reference["items"],
            reference["files"],
            reference["bytes"],
            reference["manifest"],
        )
        return reference

    # -- Airflow hooks ----------------------------------------------------------------------------
    def poke(self, context: Context) -> PokeReturnValue:
        if not self._check(context):
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self._finish(context))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self._check(context):  # already complete: no deferral at all
            return self._finish(context)
        from airflow_parallel_run.triggers import DatasetPartitionTrigger

        self.defer(
            trigger=DatasetPartitionTrigger(
                datasets=[
                    dataset_to_dict(d, credentials=True) for d in self._datasets()
                ],  # trigger kwargs are encrypted
                completeness=dataclasses.asdict(self.completeness),
                poke_interval=float(self.poke_interval),
                state=self._load_state(self._manifest_base(context)),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) if self.timeout else None,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event or event.get("status") != "complete":
            message = (event or {}).get("message", "the trigger ended without an event")
            raise AirflowException(f"Cannot watch the input: {message}")
        self.log.info("Partition complete: %s", event.get("seen"))
        return self._finish(context)
