"""Triggers: wait in the triggerer, not in a worker slot.

`ParallelRunJobTrigger` polls a job whose driver runs inside the Dask cluster (deferrable
`ParallelRunOperator`); `DatasetPartitionTrigger` polls a partition until it is complete (deferrable
`DatasetPartitionSensor`). Both carry their resume state in the event they fire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_parallel_run.core.errors import InputError


class ParallelRunJobTrigger(BaseTrigger):
    """Fires once the in-cluster job has published its summary; cancels the job on a user's kill."""

    def __init__(
        self,
        dask_conn_id: str,
        job_id: str,
        poll_interval: float = 5.0,
        first_poll_delay: float = 5.0,
    ) -> None:
        super().__init__()
        self.dask_conn_id = dask_conn_id
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.first_poll_delay = first_poll_delay

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_parallel_run.triggers.ParallelRunJobTrigger",
            {
                "dask_conn_id": self.dask_conn_id,
                "job_id": self.job_id,
                "poll_interval": self.poll_interval,
                "first_poll_delay": self.first_poll_delay,
            },
        )

    async def _client(self) -> Any:
        from distributed import Client

        from airflow_parallel_run.hooks import DaskHook

        hook = DaskHook(self.dask_conn_id)
        hook._conn = await DaskHook.aget_connection(self.dask_conn_id)
        return await Client(
            hook.scheduler_address,
            security=hook.get_security(),
            asynchronous=True,
            timeout=f"{hook.timeout}s",
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_parallel_run.core.remote import metadata_key

        await asyncio.sleep(self.first_poll_delay)  # a trigger that fires at once can be lost (upstream bug)
        last = None
        try:
            client = await self._client()
        except Exception as exc:  # noqa: BLE001 - the task must fail with the reason, not hang
            yield TriggerEvent(
                {"status": "error", "job_id": self.job_id, "message": f"cannot reach Dask: {exc}"}
            )
            return
        try:
            while True:
                summary = await client.get_metadata(metadata_key(self.job_id, "summary"), default=None)
                if summary is not None:
                    yield TriggerEvent({"status": "done", "job_id": self.job_id, "summary": summary})
                    return
                progress = await client.get_metadata(metadata_key(self.job_id, "progress"), default=None)
                if progress and progress != last:
                    self.log.info("%s", progress)
                    last = progress
                await asyncio.sleep(self.poll_interval)
        finally:
            await client.close()

    async def on_kill(self) -> None:
        """The user marked the task failed/success or cleared it: stop the job in the cluster."""
        from airflow_parallel_run.core.remote import metadata_key

        client = await self._client()
        try:
            await client.set_metadata(metadata_key(self.job_id, "cancel"), True)
            self.log.info("Asked the cluster to cancel job %s", self.job_id)
        finally:
            await client.close()


class DatasetPartitionTrigger(BaseTrigger):
    """Polls a partition with the sensor's completeness rule; fires when complete (or unreadable)."""

    def __init__(
        self,
        datasets: list[dict[str, Any]],
        completeness: dict[str, Any],
        poke_interval: float = 60.0,
        state: dict[str, Any] | None = None,
        first_poll_delay: float = 5.0,
    ) -> None:
        super().__init__()
        self.datasets = datasets
        self.completeness = completeness
        self.poke_interval = poke_interval
        self.state = state or {}
        self.first_poll_delay = first_poll_delay

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_parallel_run.triggers.DatasetPartitionTrigger",
            {
                "datasets": self.datasets,
                "completeness": self.completeness,
                "poke_interval": self.poke_interval,
                "state": self.state,
                "first_poll_delay": self.first_poll_delay,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_parallel_run.core.datasets import dataset_from_dict
        from airflow_parallel_run.core.partition import Completeness, check_partition

        rule = Completeness(**self.completeness)
        datasets = [dataset_from_dict(d) for d in self.datasets]
        state = dict(self.state)
        await asyncio.sleep(self.first_poll_delay)
        while True:
            try:
                complete, state, seen = await asyncio.to_thread(check_partition, datasets, rule, state)
            except InputError as exc:
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            self.log.info("%s", seen)
            if complete:
                yield TriggerEvent({"status": "complete", "seen": seen})
                return
            await asyncio.sleep(self.poke_interval)
