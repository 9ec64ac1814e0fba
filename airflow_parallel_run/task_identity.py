"""`TaskIdentity`: which task instance a file, a lock or an in-cluster job belongs to.

A task instance is (dag_id, run_id, task_id, map_index); the map index matters: the map indexes
of one mapped task share everything else. Everything the Airflow layer keeps per task instance
(sensor manifests and state, the in-cluster job of a deferrable task, output-folder claims) is
named from all four, so map index 0 and map index 1 never share one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def safe_name(text: str) -> str:
    """`text` as one path segment: unsafe characters become ``_``; when any did, a short hash of the
    original follows, so two ids that differ only in such characters never share a file."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip(".") or "_"
    if safe != text:
        safe += "-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return safe


@dataclass(frozen=True)
class TaskIdentity:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    @classmethod
    def from_context(cls, context: Mapping[str, Any], task: Any = None) -> TaskIdentity:
        """From a task context; `task` (the operator) fills in what a partial context lacks."""
        ti = context.get("ti")
        map_index = getattr(ti, "map_index", None)
        return cls(
            str(getattr(ti, "dag_id", None) or getattr(task, "dag_id", None) or "dag"),
            str(context.get("run_id") or getattr(ti, "run_id", None) or "run"),
            str(getattr(ti, "task_id", None) or getattr(task, "task_id", None) or "task"),
            -1 if map_index is None else int(map_index),
        )

    @property
    def mapped(self) -> bool:
        return self.map_index >= 0

    def path_base(self, root: str) -> str:
        """``<root>/<dag>/<task>/<run>``, plus ``.map<i>`` for map index i."""
        base = (
            f"{root.rstrip('/')}/{safe_name(self.dag_id)}/{safe_name(self.task_id)}/{safe_name(self.run_id)}"
        )
        return base + (f".map{self.map_index}" if self.mapped else "")

    @property
    def key(self) -> str:
        """A short stable name for the task instance (in-cluster job slots)."""
        text = "\0".join((self.dag_id, self.run_id, self.task_id, str(self.map_index)))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]

    def __str__(self) -> str:
        where = f"{self.dag_id}.{self.task_id}"
        return where + (f"[{self.map_index}]" if self.mapped else "") + f" in run {self.run_id}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
        }

    def current_state(self) -> str | None:
        """The task instance's state in Airflow now (asked through the task SDK; in a task or trigger)."""
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = RuntimeTaskInstance.get_task_states(
            dag_id=self.dag_id, map_index=self.map_index, task_ids=[self.task_id], run_ids=[self.run_id]
        )
        return self._state_in(states)

    async def acurrent_state(self) -> str | None:
        """`current_state` without blocking an event loop (in a trigger)."""
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.comms import GetTaskStates

        comms = task_runner.SUPERVISOR_COMMS
        request = GetTaskStates(
            dag_id=self.dag_id, map_index=self.map_index, task_ids=[self.task_id], run_ids=[self.run_id]
        )
        response = await comms.asend(request)
        return self._state_in(getattr(response, "task_states", None) or {})

    def _state_in(self, states: Mapping[str, Any]) -> str | None:
        by_task = states.get(self.run_id) or {}
        name = f"{self.task_id}_{self.map_index}" if self.mapped else self.task_id
        if name not in by_task:
            raise LookupError(f"Airflow knows no task instance {self}")
        state = by_task[name]
        return None if state is None else str(getattr(state, "value", state))


#: What the job's logs say when Airflow stopped the task and its state could not be read.
STOPPED_FROM_AIRFLOW = "the task was stopped from Airflow (marked success/failed or cleared)"
_CLEARED_STATES = frozenset({"none", "restarting", "scheduled", "queued", "up_for_reschedule"})
#: How long a trigger's `on_kill` waits for Airflow to say the task's new state before it falls back to
#: `STOPPED_FROM_AIRFLOW`. The triggerer answers through an execution API it builds in-process on its
#: first request (1.4 s on an idle machine, more under load), and answers in turn with its own
#: database work: 2 s was too short on a busy CI machine. The job keeps running while it waits.
STATE_WAIT_S = 8.0
#: How often the state is asked again while Airflow still reports the task as deferred.
STATE_POLL_S = 0.5


def stop_reason_for_state(state: str | None, *, known: bool = True) -> str:
    """The words for why Airflow stopped a running task, from the state it gave the task."""
    if not known:
        return STOPPED_FROM_AIRFLOW
    value = (state or "none").lower()
    if value == "success":
        return "the Airflow task was marked success"
    if value == "failed":
        return "the Airflow task was marked failed"
    if value in _CLEARED_STATES:
        return "the Airflow task was cleared"
    return f"the task was stopped from Airflow (its state is now {value})"


def identity_from_dict(task: Mapping[str, Any]) -> TaskIdentity:
    """The `TaskIdentity` a trigger carries as `TaskIdentity.as_dict()`."""
    return TaskIdentity(
        str(task["dag_id"]), str(task["run_id"]), str(task["task_id"]), int(task["map_index"])
    )


async def stop_reason_from_airflow(
    task: Mapping[str, Any] | None, *, wait_s: float = STATE_WAIT_S, poll_s: float = STATE_POLL_S
) -> str | None:
    """Why the triggerer dropped the deferred task instance `task`, in the words of `stop_reason_for_state`.

    Asked without blocking, within `wait_s`. While Airflow still reports the task as deferred, the
    state is asked again every `poll_s`: a user action shows as the new state. A task that is still
    deferred when `wait_s` ends was not stopped by anyone (the triggerer handed its trigger to another
    triggerer, which now waits for the job): None, nothing to stop. No answer, or an error: the words
    that are certain, `STOPPED_FROM_AIRFLOW`.
    """
    import asyncio

    if not task:
        return STOPPED_FROM_AIRFLOW
    identity = identity_from_dict(task)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    deferred = False
    while (remaining := deadline - loop.time()) > 0:
        try:
            state = await asyncio.wait_for(identity.acurrent_state(), remaining)
        except asyncio.TimeoutError:
            break
        except Exception:  # noqa: BLE001 - no task runner, or an error: say what is certain
            return STOPPED_FROM_AIRFLOW
        if state != "deferred":
            return stop_reason_for_state(state)
        deferred = True
        await asyncio.sleep(max(0.0, min(poll_s, deadline - loop.time())))
    return None if deferred else STOPPED_FROM_AIRFLOW
